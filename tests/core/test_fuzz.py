"""Property tests of everything a client's bytes reach first: only the protocol's own errors come out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serve.core.audio import Encoding, PcmDecoder
from serve.core.auth import Gate, bearer_token, key_digest
from serve.core.errors import ProtocolError
from serve.core.messages import Finalize, Stop, parse_client_text
from serve.core.session import KNOWN_PARAMS, StreamParams
from serve.core.settings import AuthOptions

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
control_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["finalize", "stop", "Finalize", "", "rewind"]) | json_values},
    optional={"extra": json_values},
)


@FUZZ
@given(st.text(max_size=200) | json_values.map(json.dumps) | control_like.map(json.dumps))
@example("[" * 100_000)
@example('{"type": "stop"}')
@example('{"type": "finalize", "type": "stop"}')
@example("\ud800")
def test_a_text_frame_is_a_control_message_or_bad_message(text):
    try:
        message = parse_client_text(text)
    except ProtocolError as exc:
        assert exc.code == "bad_message" and not exc.fatal
    else:
        assert isinstance(message, Finalize | Stop)
        assert json.loads(text)["type"] == message.type


@FUZZ
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
    st.sampled_from(list(Encoding)),
    st.sampled_from([8_000, 16_000, 22_050, 44_100, 48_000, 192_000]),
)
@example([np.array([np.nan], "<f4").tobytes()], Encoding.F32LE, 16_000)
@example([np.array([np.inf, -np.inf], "<f4").tobytes()], Encoding.F32LE, 48_000)
@example([np.array([1e38, -1e38], "<f4").tobytes()], Encoding.F32LE, 16_000)
@example([b"\x00\x00\x80"], Encoding.F32LE, 16_000)
def test_pcm_frames_decode_to_16k_int16_or_fail_as_bad_audio(frames, encoding, rate):
    decoder = PcmDecoder(encoding, rate)
    dtype = "<f4" if encoding is Encoding.F32LE else "<i2"
    total = 0
    for frame in frames:
        well_formed = len(frame) % encoding.sample_width == 0 and np.isfinite(np.frombuffer(frame[: len(frame) // encoding.sample_width * encoding.sample_width], dtype)).all()
        try:
            pcm = decoder.decode(frame)
        except ProtocolError as exc:
            assert (exc.code, exc.close_code) == ("bad_audio", 1003)
            assert not well_formed, "a well-formed frame was refused"
            return
        assert well_formed, "a malformed frame was accepted"
        assert pcm.dtype == np.int16
        total += pcm.size
    total += decoder.flush().size
    samples = sum(len(f) for f in frames) // encoding.sample_width
    assert abs(total - samples * 16_000 / rate) <= 2 + 16_000 / rate


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(KNOWN_PARAMS)) | st.text(max_size=12), st.text(max_size=30), max_size=6))
@example({"sample_rate": "1e309"})
@example({"sample_rate": "-0"})
@example({"language": "EN", "task": "translate"})
@example({"language": "auto"})
@example({"language": "Auto"})
@example({"language": ""})
@example({"language": " en"})
def test_query_parameters_are_params_or_a_fatal_error(query):
    try:
        params = StreamParams.from_query(query, default_language="en", multilingual=False)
    except ProtocolError as exc:
        assert exc.fatal and (exc.code, exc.close_code) in {("bad_message", 1008), ("bad_audio", 1003)}
        # Never a silent default: a language that is named but empty (or unknown) is refused.
        if set(query) == {"language"} and query["language"].lower() not in ("en", "auto"):
            assert exc.code == "bad_message" and "language" in exc.message, exc.message
    else:
        assert 8_000 <= params.sample_rate <= 192_000
        assert set(query) <= KNOWN_PARAMS
        # The language asked for (any case), or the default when none is named; an English-only model
        # takes "en" and "auto" only.
        assert params.language == query.get("language", "en").lower() and params.language in ("en", "auto")


KEY = "k3y-for-fuzzing"


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["authorization", "origin", "x-other"]), st.text(max_size=40), max_size=3),
    st.dictionaries(st.sampled_from(["token", "other"]), st.text(max_size=40), max_size=2),
)
@example({"authorization": f"Bearer {KEY}"}, {})
@example({"authorization": f"bearer  {KEY} "}, {})
@example({}, {"token": KEY})
@example({"origin": "https://ok.example/"}, {"token": KEY})
def test_the_gate_lets_in_exactly_the_key_from_an_allowed_origin(headers, query):
    gate = Gate(AuthOptions(api_keys=[key_digest(KEY)], allowed_origins=["https://ok.example"]))
    presented = bearer_token(headers, query)
    origin = headers.get("origin")
    should_pass = presented == KEY and (origin is None or origin.rstrip("/").lower() == "https://ok.example")
    try:
        gate.check(headers, query)
    except ProtocolError as exc:
        assert (exc.code, exc.close_code) == ("unauthorized", 1008) and not should_pass
        assert KEY not in exc.message
    else:
        assert should_pass


@pytest.mark.parametrize(
    "keys,env,token,ok",
    [
        (["plain-key"], {}, "plain-key", True),
        ([key_digest("hashed-key")], {}, "hashed-key", True),
        ([key_digest("hashed-key")], {}, key_digest("hashed-key"), False),  # the digest itself is no key
        ([], {"ASR_KEYS": "a-key, b-key"}, "b-key", True),
        ([], {"ASR_KEYS": "a-key, b-key"}, "c-key", False),
        ([], {"ASR_KEYS": ""}, None, True),  # the variable names no key: nothing to check
    ],
)
def test_keys_from_the_file_as_digests_and_from_the_environment(keys, env, token, ok):
    gate = Gate(AuthOptions(api_keys=keys, api_keys_env="ASR_KEYS"), environ=env)
    assert gate.keyless == (not keys and not env["ASR_KEYS"].strip())  # the per-address cap applies only then
    query = {"token": token} if token else {}
    if ok:
        gate.check({}, query)
    else:
        with pytest.raises(ProtocolError):
            gate.check({}, query)
