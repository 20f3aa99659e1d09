"""Admission control (torch-free): an auth token beyond loopback, KV reservations per session against a budget, and per-drafter-node session and in-flight token limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Hashable, Mapping, Optional, Union

__all__ = ["KvBudget", "Admission", "NodeLimits", "NodeQuotas", "is_loopback_host", "missing_auth_error"]


def is_loopback_host(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1); every other name or address, "0.0.0.0" and "::" included, is not."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve to anything
        return False


def missing_auth_error(host: str, auth_token: Union[str, Mapping[str, str], None], allow_no_auth: bool) -> Optional[str]:
    """Why a verifier may not listen on `host` this way (beyond loopback with no token and no opt-out), or None.

    `auth_token`: the shared token, or the per-node tokens (node id -> token)."""
    if auth_token or allow_no_auth or is_loopback_host(host):
        return None
    return (
        f"refusing to listen on {host!r} without an auth token: any host that can reach it could use this verifier. "
        "Set a token (--auth-token-file or --node-tokens-file; VerifierConfig.auth_token or node_tokens), listen on a loopback address (127.0.0.1, ::1, localhost), "
        "or, on a network you trust, opt out with --allow-no-auth (allow_no_auth=True)"
    )


@dataclass(frozen=True)
class Admission:
    """The answer to a reservation request: admitted, or why not (`never`: the session alone is over the budget)."""

    admitted: bool
    reserved_tokens: int
    free_tokens: int
    never: bool = False


class KvBudget:
    """Reservations of KV tokens per session against `budget_tokens`; a session that does not fit is refused, nothing admitted is touched."""

    def __init__(self, budget_tokens: int) -> None:
        if budget_tokens < 1:
            raise ValueError(f"budget_tokens must be >= 1, got {budget_tokens}")
        self.budget_tokens = budget_tokens
        self._reserved: dict[Hashable, int] = {}
        self._total = 0

    @property
    def reserved_tokens(self) -> int:
        return self._total

    @property
    def free_tokens(self) -> int:
        return self.budget_tokens - self._total

    def reserve(self, key: Hashable, tokens: int) -> Admission:
        """Reserve `tokens` for `key` if they fit (a key holds at most one reservation)."""
        if key in self._reserved:
            raise KeyError(f"{key!r} already holds a reservation")
        if tokens > self.budget_tokens:
            return Admission(False, tokens, self.free_tokens, never=True)
        if tokens > self.free_tokens:
            return Admission(False, tokens, self.free_tokens)
        self._reserved[key] = tokens
        self._total += tokens
        return Admission(True, tokens, self.free_tokens)

    def release(self, key: Hashable) -> int:
        """Free `key`'s reservation (0 if it held none); returns the tokens freed."""
        tokens = self._reserved.pop(key, 0)
        self._total -= tokens
        return tokens

    def reservation(self, key: Hashable) -> int:
        return self._reserved.get(key, 0)


@dataclass(frozen=True)
class NodeLimits:
    """Limits per drafter node (its Hello node id, over all its connections); 0 = no limit."""

    max_sessions: int = 0  # open sessions
    max_tokens_in_flight: int = 0  # Σ (γ + 1) over the node's drafts queued or being verified

    def __post_init__(self) -> None:
        if self.max_sessions < 0 or self.max_tokens_in_flight < 0:
            raise ValueError(f"per-node limits must be >= 0 (0 = no limit), got {self.max_sessions} sessions and {self.max_tokens_in_flight} tokens in flight")


class NodeQuotas:
    """What each drafter node holds against its `NodeLimits`: open sessions, and the tokens of its drafts queued or being verified.

    A draft counts γ + 1 tokens (the positions the target verifies: its γ drafted tokens and the one after
    them), so γ = 0 rounds count too. A node with nothing in flight may always submit one draft, however
    large, so a draft over the whole limit still runs (alone for its node) instead of being refused forever.
    """

    def __init__(self, limits: NodeLimits = NodeLimits()) -> None:
        self.limits = limits
        self._sessions: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._drafts: dict[Hashable, tuple[str, int]] = {}  # draft key (one per session) -> (node, tokens)

    def sessions(self, node: str) -> int:
        return self._sessions.get(node, 0)

    def tokens_in_flight(self, node: str) -> int:
        return self._in_flight.get(node, 0)

    @property
    def empty(self) -> bool:
        """No node holds a session or a draft in flight."""
        return not (self._sessions or self._in_flight or self._drafts)

    def session_refusal(self, node: str) -> Optional[str]:
        """Why `node` may not open another session now, or None if it may."""
        limit, held = self.limits.max_sessions, self.sessions(node)
        if limit and held >= limit:
            return f"drafter node {node!r} has {held} sessions open, this verifier's limit per drafter node is {limit}"
        return None

    def draft_refusal(self, node: str, tokens: int) -> Optional[str]:
        """Why `node` may not submit a draft of `tokens` (γ + 1) now, or None if it may."""
        limit, held = self.limits.max_tokens_in_flight, self.tokens_in_flight(node)
        if limit and held and held + tokens > limit:
            return (f"drafter node {node!r} has {held} draft tokens in flight (queued or being verified), this draft's {tokens} "
                    f"would exceed this verifier's limit of {limit} per drafter node; resend it after retry_after_ms")
        return None

    def add_session(self, node: str) -> None:
        self._sessions[node] = self.sessions(node) + 1

    def remove_session(self, node: str) -> None:
        left = self.sessions(node) - 1
        if left > 0:
            self._sessions[node] = left
        else:
            self._sessions.pop(node, None)

    def add_draft(self, key: Hashable, node: str, tokens: int) -> None:
        """Count a submitted draft until `release_draft(key)` (a key holds at most one draft)."""
        if key in self._drafts:
            raise KeyError(f"{key!r} already has a draft in flight")
        self._drafts[key] = (node, tokens)
        self._in_flight[node] = self.tokens_in_flight(node) + tokens

    def release_draft(self, key: Hashable) -> int:
        """The draft of `key` was verified or dropped; returns the tokens freed (0 if it had none in flight)."""
        node, tokens = self._drafts.pop(key, ("", 0))
        if tokens:
            left = self.tokens_in_flight(node) - tokens
            if left > 0:
                self._in_flight[node] = left
            else:
                self._in_flight.pop(node, None)
        return tokens
