"""The load benchmark's plumbing, without a service: the wire format, URLs, results and their bench.json shape,
the command line and the reconfigure bodies for Serve's REST API."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from serve.bench import cli, rest
from serve.bench.eval_set import EvalItem
from serve.bench.load import Options, RunRecord, StreamRecord
from serve.bench.results import BenchConfig, analyze_run, server_figures
from serve.bench.scoring import Verdict
from serve.client import Transcript, encode, listen_url


def test_encodings_carry_the_same_samples():
    samples = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    assert np.array_equal(np.frombuffer(encode(samples, "s16le"), "<i2"), samples)
    floats = np.frombuffer(encode(samples, "f32le"), "<f4")
    assert np.allclose(floats * 32768, samples)
    assert floats.min() >= -1.0 and floats.max() < 1.0


def test_urls():
    assert rest.http_base("ws://127.0.0.1:8124/v1/listen") == "http://127.0.0.1:8124"
    assert rest.http_base("wss://asr.example/v1/listen?x=1") == "https://asr.example"
    assert rest.http_base("ws://127.0.0.1:8124/unbatched/v1/listen") == "http://127.0.0.1:8124/unbatched"
    params = {"sample_rate": "16000", "encoding": "s16le", **Options(language="en").params()}
    url = listen_url("ws://h:1/v1/listen?encoding=f32le", params)
    assert "encoding=f32le" in url and "sample_rate=16000" in url and "language=en" in url
    assert "interim_results=true" in url and "token" not in url


def final(start, end, text, *word_ends):
    words = [{"word": " " + w, "end": e} for w, e in zip(text.split(), word_ends, strict=True)]
    return {"type": "final", "text": text, "start": start, "end": end, "words": words}


def two_streams() -> RunRecord:
    """Two streams, arrivals in seconds since ``ready``; each ``end`` comes 1 s after its audio was due."""
    item = EvalItem("a", Path("a.wav"), "one two three four", "short", 4.0)
    other = EvalItem("b", Path("b.wav"), "five", "short", 1.0)
    first = Transcript(close_code=1000, started=10.0, sent_s=4.0)
    first.messages = [
        final(0.0, 2.0, "one two", 1.0, 2.0),
        {"type": "partial", "text": "three", "start": 2.0, "end": 3.0},
        final(2.0, 4.0, "three for", 3.0, 4.0),
        {"type": "end"},
    ]
    first.arrivals = [2.7, 3.2, 5.0, 5.0]
    second = Transcript(close_code=1000, started=20.0, sent_s=1.0)
    second.messages = [{"type": "final", "text": "five", "start": 0.0, "end": 1.0}, {"type": "end", "duration": 1.0}]
    second.arrivals = [1.5, 2.0]
    records = [StreamRecord(item, 0.0, first), StreamRecord(other, 0.5, second)]
    return RunRecord("batched", 2, records, 12.0, None, None, None)


def test_analyze_run_pools_errors_and_lags_across_streams():
    run = two_streams()
    result = analyze_run(run, {Path("a.wav"): "one two three four", Path("b.wav"): "hive"}, speed=1.0)
    assert result.wer == pytest.approx(1 / 5)
    assert result.offline_wer == pytest.approx(1 / 5)
    assert result.final_lag.count == 3
    assert result.final_lag.max == pytest.approx(1.0)
    assert result.final_lag.min == pytest.approx(0.5)
    assert result.word_final_lag.count == 4  # the second stream's final lists no words
    assert result.word_final_lag.max == pytest.approx(2.0) and result.word_final_lag.min == pytest.approx(0.7)
    # The same words from when they were first shown: "three" in the partial at 3.2 s, the rest with their finals.
    assert result.per_stream[0].word_seen_lags == pytest.approx([1.7, 0.7, 0.2, 1.0])
    assert result.word_seen_lag.count == 4 and result.word_seen_lag.min == pytest.approx(0.2)
    assert result.failed_streams == 0
    assert [s.end_lag_s for s in result.per_stream] == pytest.approx([1.0, 1.0])


def test_results_keep_bench_json_shape():
    result = analyze_run(two_streams(), None, speed=1.0)
    run = json.loads(json.dumps(replace(result, verdict=Verdict(True, ())).to_json()))
    assert list(run) == [
        "service", "streams", "wall_s", "failed_streams", "kept_up_streams", "wer", "offline_wer", "final_lag",
        "first_text_lag", "word_final_lag", "word_seen_lag", "max_send_late_s", "server", "per_stream", "verdict",
    ]
    assert run["final_lag"] == {"count": 3, "min": pytest.approx(0.5), "max": pytest.approx(1.0),
                                "mean": pytest.approx(0.7333, abs=1e-3), "p50": pytest.approx(0.7), "p95": pytest.approx(0.97)}
    assert run["server"] == {"cpu": None, "summary_before": None, "summary_after": None, "batch_sizes": None}
    assert run["verdict"] == {"passed": True, "reasons": []}
    stream = run["per_stream"][0]
    assert list(stream) == [
        "id", "subset", "duration_s", "offset_s", "failed", "errors", "close_code", "connect_s", "max_send_late_s",
        "end_duration_s", "end_lag_s", "finals", "partials", "out_of_order_finals", "word_errors", "wer",
        "offline_word_errors", "offline_wer", "final_lag", "final_lags", "word_final_lag", "word_final_lags",
        "word_seen_lag", "word_seen_lags", "first_text_lag", "first_text_lags", "kept_up", "lag_slope", "lag_growth_s", "reference", "hypothesis",
        "offline_hypothesis",
    ]
    assert stream["word_errors"] == {"substitutions": 1, "deletions": 0, "insertions": 0, "reference_words": 4}
    assert stream["final_lags"][0] == {"audio_end": 2.0, "due": 2.0, "lag": pytest.approx(0.7)}


def test_config_lists_the_options_beside_the_rest():
    config = BenchConfig("ws://h/v1/listen", None, None, "m.jsonl", ["short"], [1, 2], Options(speed=2.0))
    assert config.to_json() == {
        "url": "ws://h/v1/listen", "unbatched_url": None, "unbatched_by": None, "manifest": "m.jsonl",
        "subsets": ["short"], "stream_counts": [1, 2], "speed": 2.0, "chunk_s": 1.0, "encoding": "s16le",
        "language": "en", "token": None, "stagger_s": 1.0, "end_timeout_s": 60.0, "seed": 0,
    }


def test_server_figures_from_the_services_summary_shape():
    before = {"whisper": {"batch_sizes": {"1": 4}, "batches": 4, "decode_seconds": 1.0, "max_batch_size": 16}}
    after = {
        "whisper": {"batch_sizes": {"1": 6, "3": 2}, "batches": 8, "decode_seconds": 2.5, "max_batch_size": 16},
        "ingress": {"open_streams": 0},
    }
    figures = server_figures(before, after)
    assert figures.batch_sizes == {1: 2, 3: 2}
    assert figures.batches == 4
    assert figures.decode_seconds == pytest.approx(1.5)
    assert figures.mean_batch_size == pytest.approx(2.0)
    assert figures.max_batch_size == 16
    assert server_figures(None, None).to_json() == {
        "cpu": None, "summary_before": None, "summary_after": None, "batch_sizes": None
    }


def test_command_line_help_and_sweep_parsing(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--sweep" in capsys.readouterr().out
    assert cli.parse_args(["--sweep", "1,2,4"]).stream_counts == [1, 2, 4]
    assert cli.parse_args(["--survey"]).stream_counts == [1, 3, 15]
    with pytest.raises(SystemExit):
        cli.parse_args(["--sweep", "1,x"])


# -- the unbatched comparison by reconfiguring ------------------------------------------------------


def details(*apps):
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": {
            name: {
                "route_prefix": prefix,
                "deployed_app_config": {"name": name, "route_prefix": prefix, "import_path": "serve.deploy.app:build_app",
                                        "args": {"batching": {"max_batch_size": 16}, "engine": {"beam_size": 1}}}
                if declared else None,
            }
            for name, prefix, declared in apps
        },
    }


def test_reconfigure_changes_only_the_batch_size_of_the_app_serving_the_url():
    got = details(("asr", "/", True), ("other", "/other", True), ("by-python", "/py", False))
    target, original, changed = rest.batching_configs(got, "ws://127.0.0.1:8000/other/v1/listen")
    assert target == "other"
    assert [a["name"] for a in original["applications"]] == ["asr", "other"]  # a deploy replaces every app
    assert original["proxy_location"] == "EveryNode" and original["http_options"]["port"] == 8000
    by_name = {a["name"]: a for a in changed["applications"]}
    # args are the app's code version (a change restarts replicas): they stay as they are, and the batch size goes
    # to the Whisper deployment's user_config, which Serve applies in place.
    assert by_name["other"]["args"] == original["applications"][1]["args"]
    assert by_name["other"]["deployments"] == [{"name": "Whisper", "user_config": {"max_batch_size": 1}}]
    assert "deployments" not in by_name["asr"]
    # The restoring body is untouched by the change.
    assert "deployments" not in original["applications"][1]
    assert rest.batching_configs(got, "ws://127.0.0.1:8000/v1/listen")[0] == "asr"


def test_reconfigure_keeps_the_whisper_deployments_other_settings():
    got = details(("asr", "/", True))
    config = got["applications"]["asr"]["deployed_app_config"]
    config["deployments"] = [{"name": "Ingress"}, {"name": "Whisper", "autoscaling_config": {"min_replicas": 2}}]
    _, original, changed = rest.batching_configs(got, "ws://127.0.0.1:8000/v1/listen")
    assert changed["applications"][0]["deployments"] == [
        {"name": "Ingress"},
        {"name": "Whisper", "autoscaling_config": {"min_replicas": 2}, "user_config": {"max_batch_size": 1}},
    ]
    assert original["applications"][0]["deployments"][1] == {"name": "Whisper", "autoscaling_config": {"min_replicas": 2}}


def test_reconfigure_needs_an_app_deployed_from_a_config():
    with pytest.raises(ValueError, match="from a config"):
        rest.batching_configs(details(("by-python", "/", False)), "ws://127.0.0.1:8000/v1/listen")
    with pytest.raises(ValueError, match="serves"):
        rest.batching_configs(details(("asr", "/asr", True)), "ws://127.0.0.1:8000/v1/listen")


def test_compare_unbatched_no_longer_needs_a_second_url():
    args = cli.parse_args(["--sweep", "1,2", "--compare-unbatched"])
    assert args.compare_unbatched and args.unbatched_url is None
    assert rest.serve_api_base("ws://10.0.0.5:8000/v1/listen") == "http://10.0.0.5:8265"
