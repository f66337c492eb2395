import numpy as np

from serve.core.audio import load_audio
from serve.core.vad import FRAME, VadOptions, VadState, segment


def test_incremental_scoring_equals_one_pass(vad, by_id):
    audio = load_audio(by_id["jfk"].path)[: 16_000 * 4]
    whole = vad.score(VadState(), audio)
    state = VadState()
    pieces = [vad.score(state, audio[i : i + 160]) for i in range(0, audio.size, 160)]  # 10 ms chunks
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)
    assert whole.size == audio.size // FRAME
    assert state.remainder.size == audio.size % FRAME


def test_speech_is_found_and_silence_is_not(vad, by_id):
    options = VadOptions()
    audio = np.concatenate([np.zeros(16_000, np.float32), load_audio(by_id["ls-1089-134691-0000"].path), np.zeros(16_000, np.float32)])
    state = VadState()
    closed = segment(state, vad.score(state, audio), options)
    assert len(closed) >= 1 and state.open_segment is None
    assert 1.2 * 16_000 <= closed[0].start <= 1.8 * 16_000  # the clip's speech begins 0.6 s in
    silence = VadState()
    assert segment(silence, vad.score(silence, np.zeros(16_000 * 3, np.float32)), options) == []
    assert silence.open_segment is None


def test_state_survives_a_pickle_between_chunks(vad, by_id):
    import pickle

    audio = load_audio(by_id["jfk"].path)[: 16_000 * 3]
    direct = VadState()
    a = np.concatenate([vad.score(direct, audio[:20_000]), vad.score(direct, audio[20_000:])])
    handed = VadState()
    first = vad.score(handed, audio[:20_000])
    handed = pickle.loads(pickle.dumps(handed))
    b = np.concatenate([first, vad.score(handed, audio[20_000:])])
    np.testing.assert_array_equal(a, b)
