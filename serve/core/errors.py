"""Errors a client can cause, each with its PROTOCOL.md code and close code."""

from __future__ import annotations

# WebSocket close codes used by the protocol.
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013


class ProtocolError(Exception):
    """An error reported to the client as an ``error`` message.

    ``close_code`` is None for a non-fatal error (the stream goes on).
    """

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code

    @property
    def fatal(self) -> bool:
        return self.close_code is not None


class AudioError(ProtocolError):
    """Audio that cannot be decoded: fatal, close 1003."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_audio", message, CLOSE_UNSUPPORTED)
