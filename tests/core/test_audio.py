import numpy as np
import pytest

from serve.core.audio import SAMPLE_RATE, Encoding, PcmDecoder, Resampler, check_sample_rate, decode_pcm
from serve.core.errors import AudioError


def test_f32le_and_s16le_decode_to_the_same_signal():
    t = np.arange(1600) / SAMPLE_RATE
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    as_f32 = decode_pcm(wave.astype("<f4").tobytes(), Encoding.F32LE)
    as_s16 = decode_pcm((wave * 32767).astype("<i2").tobytes(), Encoding.S16LE)
    np.testing.assert_allclose(as_f32, wave)
    np.testing.assert_allclose(as_s16, wave, atol=1e-4)


@pytest.mark.parametrize("encoding,size", [(Encoding.F32LE, 6), (Encoding.S16LE, 3), (Encoding.F32LE, 1)])
def test_partial_samples_are_refused(encoding, size):
    with pytest.raises(AudioError, match="whole number"):
        decode_pcm(b"\0" * size, encoding)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_refused(bad):
    data = np.array([0.0, bad, 0.1], "<f4").tobytes()
    with pytest.raises(AudioError) as info:
        decode_pcm(data, Encoding.F32LE)
    assert info.value.code == "bad_audio" and info.value.close_code == 1003


def test_empty_frame_is_no_samples():
    assert decode_pcm(b"", Encoding.S16LE).size == 0


@pytest.mark.parametrize("rate", [0, -1, 100, 7999, 192_001, 10**9])
def test_absurd_rates_are_refused(rate):
    with pytest.raises(AudioError, match="sample_rate"):
        check_sample_rate(rate)


def test_streaming_resampler_keeps_length_and_pitch():
    rate = 44_100
    t = np.arange(rate * 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    resampler = Resampler(rate)
    pieces = [resampler.process(tone[i : i + 4410]) for i in range(0, tone.size, 4410)]
    pieces.append(resampler.process(np.zeros(0, np.float32), last=True))
    out = np.concatenate(pieces)
    assert abs(out.size - 2 * SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(out[SAMPLE_RATE // 2 : SAMPLE_RATE // 2 + SAMPLE_RATE]))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 1  # 1 Hz bins over one second


def test_pcm_decoder_counts_input_seconds_and_outputs_int16():
    decoder = PcmDecoder(Encoding.F32LE, 48_000)
    out = decoder.decode(np.zeros(48_000, "<f4").tobytes())
    out = np.concatenate([out, decoder.flush()])
    assert out.dtype == np.int16
    assert decoder.seconds_in == pytest.approx(1.0)
    assert abs(out.size - SAMPLE_RATE) <= 2
