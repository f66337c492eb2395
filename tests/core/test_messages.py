import json

import pytest

from serve.core.errors import ProtocolError
from serve.core.messages import Final, Finalize, Stop, parse_client_text, server_message_adapter
from serve.core.words import Word


@pytest.mark.parametrize("text,kind", [('{"type": "stop"}', Stop), ('{"type":"finalize"}', Finalize)])
def test_control_messages_parse(text, kind):
    assert isinstance(parse_client_text(text), kind)


@pytest.mark.parametrize(
    "text", ["garbage", "", "[1,2]", '"stop"', '{"type": "flush"}', "{}", '{"type": null}', "[" * 100_000]
)
def test_bad_control_messages_are_non_fatal_bad_message(text):
    with pytest.raises(ProtocolError) as info:
        parse_client_text(text)
    assert info.value.code == "bad_message"
    assert not info.value.fatal


def test_final_round_trips_through_the_schema():
    final = Final.from_words([Word(" Hello,", 1.0, 1.4, 0.9), Word(" world.", 1.4, 1.9, 0.8)])
    data = json.loads(final.to_json())
    assert data == {
        "type": "final",
        "text": "Hello, world.",
        "start": 1.0,
        "end": 1.9,
        "words": [
            {"word": "Hello,", "start": 1.0, "end": 1.4, "probability": 0.9},
            {"word": "world.", "start": 1.4, "end": 1.9, "probability": 0.8},
        ],
    }
    assert server_message_adapter.validate_python(data) == final
