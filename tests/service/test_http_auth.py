"""The HTTP side of the API-key gate: ``/metrics/summary`` (node and GPU ids, counters) is behind the key, like a
stream; ``/healthz`` (what a load balancer probes) stays open and shows none of it."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from serve.bench.rest import fetch_summary
from tests.conftest import with_api_key

pytestmark = pytest.mark.serve

KEY = "summary-key-4d2b8e0c"


@pytest.fixture(scope="module")
def keyed(service):
    """The service with one API key; restored afterwards."""
    yield from with_api_key(service, KEY)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_metrics_summary_needs_the_key_when_keys_are_set(keyed):
    summary = f"{keyed.http}/metrics/summary"
    for headers, url in [({}, summary), ({"Authorization": "Bearer wrong"}, summary), ({}, f"{summary}?token=wrong")]:
        status, body = get(url, headers)
        assert status == 401 and body["code"] == "unauthorized", (headers, url, status, body)
        assert "node_id" not in json.dumps(body) and KEY not in json.dumps(body)
    # The same two ways a stream presents its key.
    for headers, url in [({"Authorization": f"Bearer {KEY}"}, summary), ({}, f"{summary}?token={KEY}")]:
        status, body = get(url, headers)
        assert status == 200 and body["whisper"]["node_id"], (headers, url, status, body)
    # What reads it: the tests' Service.summary and the bench send the key they are given.
    assert keyed.summary()["ingress"]["open_streams"] == 0
    assert asyncio.run(fetch_summary(keyed.http, KEY))["whisper"]["model"] == "tiny.en"
    assert asyncio.run(fetch_summary(keyed.http, None)) is None


def test_healthz_stays_open_and_shows_no_placement(keyed):
    status, body = get(f"{keyed.http}/healthz")
    assert status == 200 and body["status"] == "ok", body
    assert not {"node_id", "gpu_ids", "cuda_visible_devices"} & set(body), body
