"""When a busy decoder refuses optional decodes, and when it expects to take them again."""

from serve.core.shedding import PartialShedder


def test_a_refusal_says_when_the_queue_lets_such_a_decode_in_again():
    shedder = PartialShedder(max_wait_s=1.0, eager_wait_s=0.25)
    shedder.record(batch_size=2, seconds=0.8)  # 0.4 s a window (a CPU)
    shedder.queued = 3  # 1.2 s of work waiting
    assert not shedder.admit(optional=True, eager=True) and not shedder.admit(optional=True)
    assert shedder.admit(optional=False)  # finals always
    assert abs(shedder.retry_after_s(eager=True) - 1.2) < 1e-9  # until no window is left (0.4 s > 0.25 s)
    assert abs(shedder.retry_after_s(eager=False) - 0.4) < 1e-9  # until two are left (0.8 s <= 1.0 s)
    shedder.queued = 2  # 0.8 s: room for a partial, none for an eager one
    assert shedder.admit(optional=True) and shedder.retry_after_s(eager=False) == 0.0
    assert not shedder.admit(optional=True, eager=True) and shedder.retry_after_s(eager=True) > 0


def test_a_caller_back_after_retry_after_s_is_taken_and_not_sooner():
    """The promise matches ``admit``: the queue drains a window at a time, so the wait it counts falls in steps of a
    window's cost. On a CPU a window (0.3 s) costs more than an eager decode may wait (0.25 s): an eager caller
    refused behind one window must stay away until that window is done, not 0.05 s."""
    for seconds_per_item in (0.3, 0.4, 0.004):  # a CPU's decode, a slower one, a GPU batch's share
        for queued in range(1, 80):
            for eager in (True, False):
                shedder = PartialShedder(max_wait_s=1.0, eager_wait_s=0.25)
                shedder.record(batch_size=1, seconds=seconds_per_item)
                shedder.queued = queued
                if shedder.admit(optional=True, eager=eager):
                    assert shedder.retry_after_s(eager) == 0.0
                    continue
                drained = round(shedder.retry_after_s(eager) / seconds_per_item)  # windows done by then
                assert abs(drained * seconds_per_item - shedder.retry_after_s(eager)) < 1e-9
                shedder.queued = queued - drained
                assert shedder.admit(optional=True, eager=eager), (seconds_per_item, queued, eager)
                shedder.queued += 1
                assert not shedder.admit(optional=True, eager=eager), (seconds_per_item, queued, eager)
