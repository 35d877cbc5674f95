"""What one visitor may ask of the server: prompt length, request rates per client, training time per client, and
the owner ids the server issues and signs. Pure Python (no gradio), so every rule is unit-testable.

Every limit has an environment variable (read by `ServerLimits.from_env`) and is documented in docs/SECURITY.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from .store import check_owner


@dataclass
class ServerLimits:
    """The per-client limits of the app; `from_env` reads the T2I_* variables."""

    max_prompt_chars: int = 500  # the Textbox says 300; API clients are held to this
    requests_per_minute: float = 30.0  # generate/animate/uploads per client (owner id or session)
    burst: int = 10  # requests a client may send at once before the rate applies
    max_run_minutes: float = 60.0  # a run's time budget; 0 ("no limit") means this
    client_train_minutes: float = 120.0  # training time one client (IP address) may start per day

    @classmethod
    def from_env(cls) -> "ServerLimits":
        env = os.environ.get
        return cls(int(env("T2I_MAX_PROMPT_CHARS") or 500), float(env("T2I_RATE_PER_MIN") or 30),
                   int(env("T2I_RATE_BURST") or 10), float(env("T2I_MAX_RUN_MINUTES") or 60),
                   float(env("T2I_CLIENT_TRAIN_MINUTES") or 120))


def prompt_problem(prompts: list, max_chars: int) -> str | None:
    """A one-line refusal for an over-long prompt (checked before any encoding), else None."""
    for prompt in prompts:
        if isinstance(prompt, str) and len(prompt) > max_chars:
            return (f"The prompt is {len(prompt):,} characters long; the limit is {max_chars}. "
                    "Describe the picture in a sentence or two.")
    return None


class RateLimiter:
    """A token bucket per client key: `burst` requests at once, then `per_minute`. Memory stays bounded: idle keys
    (full buckets) are dropped when more than `max_keys` are tracked."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = 10_000, clock=time.monotonic):
        self.rate, self.burst, self.max_keys, self.clock = per_minute / 60.0, burst, max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()

    def wait_s(self, key: str, cost: float = 1.0) -> float:
        """0 and one request charged if `key` may go now; else the seconds to wait (nothing charged)."""
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                return (cost - tokens) / self.rate if self.rate > 0 else float("inf")
            self._buckets[key] = (tokens - cost, now)
            if len(self._buckets) > self.max_keys:
                self._prune(now)
            return 0.0

    def refusal(self, key: str, cost: float = 1.0) -> str | None:
        wait = self.wait_s(key, cost)
        if not wait:
            return None
        return f"Too many requests from you at once; wait {max(1, round(wait))} s and try again."

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, when) in self._buckets.items() if tokens + (now - when) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


class Gate:
    """The server-side checks of a request, before any work: prompt length, then the visitor's request rate."""

    def __init__(self, limits: ServerLimits):
        self.limits, self.limiter = limits, RateLimiter(limits.requests_per_minute, limits.burst)

    def refusal(self, prompts: list, key: str, cost: float = 1.0) -> str | None:
        return prompt_problem(prompts, self.limits.max_prompt_chars) or self.limiter.refusal(key, cost)

    def check(self, prompts: list, key: str, cost: float = 1.0) -> None:
        """ValueError with the refusal, if any."""
        problem = self.refusal(prompts, key, cost)
        if problem:
            raise ValueError(problem)


class TrainingQuota:
    """Training minutes one client (an IP address: new owner ids are free) may start in a rolling window, so that
    the one training slot cannot be held forever by resubmitting under new ids."""

    def __init__(self, minutes: float, window_s: float = 24 * 3600.0, clock=time.time):
        self.minutes, self.window_s, self.clock = minutes, window_s, clock
        self._starts: dict[str, deque] = {}
        self._lock = threading.Lock()

    def refusal(self, client: str, minutes: float) -> str | None:
        """None if `client` may start `minutes` more now; else a one-line refusal that says when to come back."""
        with self._lock:
            used, now = self._recent(client), self.clock()
            if sum(m for _, m in used) + minutes <= self.minutes:
                return None
            wait_min = max(1, round((used[0][0] + self.window_s - now) / 60)) if used else 1
            return (f"You have started {sum(m for _, m in used):g} of your {self.minutes:g} minutes of training "
                    f"for today; pick a shorter time budget or try again in about {wait_min} min.")

    def charge(self, client: str, minutes: float) -> None:
        with self._lock:
            self._recent(client).append((self.clock(), minutes))

    def _recent(self, client: str) -> deque:
        starts = self._starts.setdefault(client, deque())
        while starts and starts[0][0] < self.clock() - self.window_s:
            starts.popleft()
        return starts


class OwnerIds:
    """Owner ids issued and signed by the server: `<random>-<hmac>`. A client cannot make one up or reuse a made-up
    one: an id that fails the check is replaced by a fresh identity. The secret never leaves the server."""

    def __init__(self, secret: str):
        self._key = hashlib.sha256(("t2i-owner-ids:" + secret).encode()).digest()

    def _sign(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:24]

    def issue(self) -> str:
        token = secrets.token_hex(12)
        return f"{token}-{self._sign(token)}"

    def verify(self, owner) -> bool:
        if not isinstance(owner, str) or owner.count("-") != 1:
            return False
        token, signature = owner.split("-")
        return len(token) == 24 and hmac.compare_digest(signature, self._sign(token))

    def for_session(self, session_hash: str) -> str:
        """An API client's id without a stored one: derived from its session (known only to that client)."""
        token = hashlib.sha256(("session:" + session_hash).encode()).hexdigest()[:24]
        return check_owner(f"{token}-{self._sign(token)}")

    def browser_state_secret(self) -> str:
        """For gr.BrowserState, whose secret is published in the page: derived one way from the signing key."""
        return hmac.new(self._key, b"browser-state", hashlib.sha256).hexdigest()[:32]
