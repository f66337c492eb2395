"""When a decode worker is behind, tentative (partial) decodes are the work to shed: finals never are."""

from __future__ import annotations

import math


class PartialShedder:
    """Estimates how long a new request would wait and refuses optional ones past ``max_wait_s``.

    The wait is the requests already queued or decoding times the recent cost of one item
    (seconds of a batch over its size: small on a GPU that batches, about a decode on a CPU).
    """

    def __init__(self, max_wait_s: float, eager_wait_s: float = 0.25, smoothing: float = 0.2) -> None:
        self.max_wait_s = max_wait_s
        self.eager_wait_s = eager_wait_s
        self.smoothing = smoothing
        self.seconds_per_item = 0.0
        self.queued = 0
        """Requests accepted and not yet answered."""

    def record(self, batch_size: int, seconds: float) -> None:
        """One batch ran: fold its cost per item into the moving average."""
        if batch_size <= 0:
            return
        cost = seconds / batch_size
        self.seconds_per_item = cost if self.seconds_per_item == 0 else (
            (1 - self.smoothing) * self.seconds_per_item + self.smoothing * cost
        )

    @property
    def expected_wait_s(self) -> float:
        return self.queued * self.seconds_per_item

    def limit_s(self, eager: bool) -> float:
        """The longest expected wait at which an optional request of this kind is taken."""
        return min(self.eager_wait_s, self.max_wait_s) if eager else self.max_wait_s

    def admit(self, optional: bool, eager: bool = False) -> bool:
        """Whether to take a request now: required ones always; eager ones only while the wait is short (the
        replica has room: idle on a CPU, a batch not yet full on a GPU), other optional ones up to ``max_wait_s``."""
        return not optional or self.expected_wait_s <= self.limit_s(eager)

    def retry_after_s(self, eager: bool) -> float:
        """How long until the queue, draining without new requests, lets an optional request of this kind in. It
        drains a request at a time, and ``admit`` counts whole requests: the answer is the time of the requests that
        must be done first. (Not the excess wait alone: on a CPU, where a decode costs more than ``eager_wait_s``,
        that sent eager callers back while the decode ahead of them still ran, to be refused again.)"""
        excess = self.expected_wait_s - self.limit_s(eager)
        if excess <= 0 or self.seconds_per_item <= 0:
            return 0.0
        return math.ceil(excess / self.seconds_per_item - 1e-9) * self.seconds_per_item
