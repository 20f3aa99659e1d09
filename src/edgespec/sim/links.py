"""A network link in one direction: FIFO serialisation at a rate, propagation latency, jitter, and loss with retransmission."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["LinkModel", "Link"]

_log = math.log


@dataclass(frozen=True)
class LinkModel:
    """One direction of a link. `loss` is per message; a lost message is sent again after `retransmit_s`.

    Jitter is exponential with mean `jitter_s`, added per message on top of `latency_s`, but the link
    keeps order (as TCP/WebSocket does): a message never arrives before the one sent ahead of it.
    """

    rate_bps: float
    latency_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    retransmit_s: float = 0.2

    def __post_init__(self) -> None:
        if not self.rate_bps > 0:
            raise ValueError(f"rate_bps must be > 0, got {self.rate_bps}")
        if self.latency_s < 0 or self.jitter_s < 0 or self.retransmit_s < 0:
            raise ValueError("latency_s, jitter_s and retransmit_s must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")


class Link:
    """A FIFO link: each message waits for the previous one to leave, then takes size/rate (+ retransmissions) and latency."""

    __slots__ = ("model", "rng", "free_at_s", "last_arrival_s", "bytes_sent", "busy_s", "_bits_per_s", "_latency_s", "_jitter_s", "_log_loss", "_random")

    def __init__(self, model: LinkModel, rng: random.Random) -> None:
        self.model, self.rng = model, rng
        self.free_at_s = 0.0  # when the transmitter is free again
        self.last_arrival_s = 0.0  # arrival of the last message (order is kept)
        self.bytes_sent = 0.0
        self.busy_s = 0.0  # transmitter busy (all attempts)
        self._bits_per_s, self._latency_s, self._jitter_s = model.rate_bps, model.latency_s, model.jitter_s
        self._log_loss = math.log(model.loss) if model.loss > 0 else None
        self._random = rng.random

    def send(self, now_s: float, size_bytes: float) -> float:
        """Put a message on the link at `now_s`; returns its arrival time (pure arithmetic, no events)."""
        free = self.free_at_s
        start = free if free > now_s else now_s
        wire = 8.0 * size_bytes / self._bits_per_s
        if self._log_loss is not None:  # attempts until one gets through: each failure costs a transmission and a timeout
            failures = int(_log(1.0 - self._random()) / self._log_loss)
            wire += failures * (wire + self.model.retransmit_s)
        self.free_at_s = free = start + wire
        arrival = free + self._latency_s
        if self._jitter_s:
            arrival -= self._jitter_s * _log(1.0 - self._random())  # exponential, mean jitter_s
        if arrival < self.last_arrival_s:
            arrival = self.last_arrival_s
        self.last_arrival_s = arrival
        self.bytes_sent += size_bytes
        self.busy_s += wire
        return arrival
