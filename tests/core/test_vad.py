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


def test_streams_scored_together_get_the_probabilities_they_get_alone(vad, manifest):
    """A BufferManager hands the new audio of concurrent calls to the VAD together (score_batch): each stream, in
    calls of any length and handed with any others, gets what it gets scored alone."""
    clips = [item for item in manifest if item.subset in ("short", "nonspeech")][::7][:8]
    audios = [load_audio(item.path)[: 16_000 * 6] for item in clips]
    alone = [vad.score(VadState(), audio) for audio in audios]
    states, got, at = [VadState() for _ in audios], [[] for _ in audios], [0] * len(audios)
    rng = np.random.default_rng(20261202)
    while any(a < audio.size for a, audio in zip(at, audios)):
        batch = [k for k in range(len(audios)) if at[k] < audios[k].size and rng.random() < 0.8]
        sizes = [int(rng.integers(0, 40_000)) for _ in batch]  # 0 to 2.5 s: empty calls and sub-frame ones too
        results = vad.score_batch([(states[k], audios[k][at[k] : at[k] + n]) for k, n in zip(batch, sizes)])
        for k, n, probs in zip(batch, sizes, results):
            got[k].append(probs)
            at[k] += n
    for k, audio in enumerate(audios):
        np.testing.assert_allclose(np.concatenate(got[k]), alone[k], atol=1e-6, err_msg=clips[k].id)
        assert states[k].remainder.size == audio.size % FRAME


def test_the_sequence_model_gives_the_streaming_models_probabilities(vad, manifest):
    """SileroVad scores a call's frames in one call of the package's sequence export; the package's streaming export,
    run frame by frame as its own iterator does (the previous frame's last 64 samples before each frame, the
    recurrent state carried), is the reference: every frame's probability is the same, whatever the call sizes."""
    from silero_vad import load_silero_vad

    streaming = load_silero_vad(onnx=True).session
    clips = [item for item in manifest if item.subset in ("short", "nonspeech")][::5][:6]
    rng = np.random.default_rng(7)
    for clip in clips:
        audio = load_audio(clip.path)[: 16_000 * 8].astype(np.float32)
        state, context, expected = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32), []
        for i in range(audio.size // FRAME):
            frame = audio[i * FRAME : (i + 1) * FRAME][None]
            out, state = streaming.run(None, {"input": np.concatenate([context, frame], axis=1), "state": state,
                                              "sr": np.array(16_000, np.int64)})
            expected.append(out[0, 0])
            context = frame[:, -64:]
        scored, at, got = VadState(), 0, []
        while at < audio.size:
            n = int(rng.integers(0, 24_000))
            got.append(vad.score(scored, audio[at : at + n]))
            at += n
        np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-6, err_msg=clip.id)
        assert any(p > 0.5 for p in expected) or clip.subset == "nonspeech"
