"""When a busy decoder refuses optional decodes, and when it expects to take them again."""

from serve.core.shedding import PartialShedder


def test_a_refusal_says_when_the_queue_lets_such_a_decode_in_again():
    shedder = PartialShedder(max_wait_s=1.0, eager_wait_s=0.25)
    shedder.record(batch_size=2, seconds=0.8)  # 0.4 s a window (a CPU)
    shedder.queued = 3  # 1.2 s of work waiting
    assert not shedder.admit(optional=True, eager=True) and not shedder.admit(optional=True)
    assert shedder.admit(optional=False)  # finals always
    assert abs(shedder.retry_after_s(eager=True) - 0.95) < 1e-9  # until 0.25 s of work is left
    assert abs(shedder.retry_after_s(eager=False) - 0.2) < 1e-9  # until 1.0 s is left
    shedder.queued = 2  # 0.8 s: room for a partial, none for an eager one
    assert shedder.admit(optional=True) and shedder.retry_after_s(eager=False) == 0.0
    assert not shedder.admit(optional=True, eager=True) and shedder.retry_after_s(eager=True) > 0
