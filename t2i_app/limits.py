"""What one visitor may ask of the server: prompt length, request rates per identity and per IP address, training
time per address, and the owner ids the server issues and signs. Pure Python (no gradio), so every rule is
unit-testable.

Every limit has an environment variable (read by `ServerLimits.from_env`) and is documented in docs/SECURITY.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
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
    ip_requests_per_minute: float = 120.0  # generate/animate/uploads per IP address, whatever its owner ids; 0 = off
    ip_burst: int = 40  # requests one address may send at once before its rate applies
    ip_joins_per_minute: float = 600.0  # events (any: page polls too) one address may add to the queue; 0 = off
    ip_join_burst: int = 60
    ip_queued_max: int = 8  # events one address may have waiting or running in the queue at once; 0 = off
    sessions_max: int = 1000  # browser sessions whose page state the server keeps (about 150 KB each); oldest go

    @classmethod
    def from_env(cls) -> "ServerLimits":
        env = os.environ.get
        return cls(int(env("T2I_MAX_PROMPT_CHARS") or 500), float(env("T2I_RATE_PER_MIN") or 30),
                   int(env("T2I_RATE_BURST") or 10), float(env("T2I_MAX_RUN_MINUTES") or 60),
                   float(env("T2I_CLIENT_TRAIN_MINUTES") or 120), float(env("T2I_IP_RATE_PER_MIN") or 120),
                   int(env("T2I_IP_RATE_BURST") or 40), float(env("T2I_IP_JOINS_PER_MIN") or 600),
                   int(env("T2I_IP_JOIN_BURST") or 60), int(env("T2I_IP_QUEUED_MAX") or 8),
                   max(1, int(env("T2I_SESSIONS_MAX") or 1000)))


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

    def wait_s(self, key: str, cost: float = 1.0, charge: bool = True) -> float:
        """0 if `key` may go now (and, with `charge`, the request is charged); else the seconds to wait (nothing
        charged). A request never costs more than a full bucket: the heaviest ones wait for one."""
        cost = min(float(cost), float(self.burst))
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                return (cost - tokens) / self.rate if self.rate > 0 else float("inf")
            self._buckets[key] = (tokens - cost if charge else tokens, now)
            if len(self._buckets) > self.max_keys:
                self._prune(now)
            return 0.0

    def refusal(self, key: str, cost: float = 1.0) -> str | None:
        wait = self.wait_s(key, cost)
        return too_many("you", wait) if wait else None

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, when) in self._buckets.items() if tokens + (now - when) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


# What a request costs, in proportion to the pixels it makes: the page's defaults cost 1 (generate: 4 images at
# 256 px) and 2 (animate: 24 frames at 256 px, each written to three files). A display size of 0 (the model's own)
# counts as 256. A 120-frame animation at 512 px costs 40: the most one address may send at once.
def generate_cost(num_images, size) -> float:
    return max(1.0, _pixels(num_images, size) / (4 * 256**2))


def animate_cost(frames, size) -> float:
    return 2.0 * max(1.0, _pixels(frames, size) / (24 * 256**2))


def _pixels(count, size) -> float:
    try:
        return max(1, int(count)) * max(64, int(size or 256)) ** 2
    except (TypeError, ValueError, OverflowError):
        return 0.0  # not a number: gradio or the pipeline refuses it, at the least cost


def too_many(who: str, wait_s: float) -> str:
    wait = "a while" if wait_s == float("inf") else f"{max(1, round(wait_s))} s"
    return f"Too many requests from {who} at once; wait {wait} and try again."


def client_address(request) -> str | None:
    """The visitor's IP address (gradio.Request.client.host), None without one. Behind a reverse proxy this is the
    address in X-Forwarded-For when the proxy is trusted (uvicorn's FORWARDED_ALLOW_IPS), else the proxy's own."""
    host = getattr(getattr(request, "client", None), "host", None)
    return host if isinstance(host, str) and host else None


# Where a Hugging Face Space's proxy connects from: addresses no visitor on the internet has.
PRIVATE_NETWORKS = "127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def trust_space_proxy(environ=os.environ) -> None:
    """On a Space (SPACE_ID set) every request arrives through its proxy, from a private address: have uvicorn take
    the visitor's address from X-Forwarded-For when it comes from one, so that the per-address limits see visitors
    rather than the proxy. An operator's own FORWARDED_ALLOW_IPS is kept. Call before launching."""
    if environ.get("SPACE_ID"):
        environ.setdefault("FORWARDED_ALLOW_IPS", PRIVATE_NETWORKS)


def cap_malloc_arenas(environ=os.environ) -> bool:
    """Hold glibc's malloc to a few arenas (T2I_MALLOC_ARENAS, default 2; 0 leaves it alone). By default each thread
    that allocates may get its own arena, up to 8 per core, and each keeps the memory freed into it: the server's
    worker threads each run the generator, so under load its memory grew and stayed (bench/load_test.py: +516 MB
    over a 2-minute flood; +111 MB with 2 arenas). The same as MALLOC_ARENA_MAX, set from inside. Call before the
    server starts its threads. False where it does not apply (not glibc)."""
    import ctypes
    import ctypes.util

    arenas = int(environ.get("T2I_MALLOC_ARENAS") or 2)
    name = ctypes.util.find_library("c")
    if arenas <= 0 or not name or "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.gnu_get_libc_version and libc.mallopt(-8, arenas))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False


class QueueAdmission:
    """ASGI middleware: what one IP address may add to the server's queue (POST .../queue/join). Joins come at
    `limiter`'s rate, and at most `max_queued` of an address's events may wait or run at once (`queued(host)` counts
    them in the queue). Beyond either, a join is answered 429 with a one-line message, before it takes a place in the
    queue: gradio has one queue for everybody and refuses every visitor while it is full, so one address must not
    fill it, however slowly it sends."""

    def __init__(self, app, limiter: RateLimiter | None, max_queued: int = 0, queued=None):
        self.app, self.limiter, self.max_queued, self.queued = app, limiter, max_queued, queued
        self._joining: dict[str, int] = {}  # joins passed on whose answer has not come back yet

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").endswith("/queue/join"):
            host = (scope.get("client") or ("",))[0]
            refusal = self.refusal(host) if host else None
            if refusal:
                message, wait = refusal
                body = json.dumps({"detail": "⚠ " + message}).encode()
                headers = [(b"content-type", b"application/json"), (b"retry-after", str(math.ceil(wait)).encode())]
                await send({"type": "http.response.start", "status": 429, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            if host:
                self._joining[host] = self._joining.get(host, 0) + 1
                try:
                    return await self.app(scope, receive, send)
                finally:
                    self._joining[host] -= 1
                    if not self._joining[host]:
                        del self._joining[host]
        await self.app(scope, receive, send)

    def refusal(self, host: str) -> tuple[str, float] | None:
        """(message, seconds to wait) for a join from `host` that may not go now; None, with the join charged."""
        if self.max_queued > 0 and self.queued is not None:
            held = self._joining.get(host, 0) + self.queued(host)
            if held >= self.max_queued:
                return (f"Your address already has {held} requests waiting or running; wait for them to finish "
                        f"and try again.", 5.0)
        wait = self.limiter.wait_s(host) if self.limiter is not None else 0.0
        return (too_many("your address", wait), wait) if wait else None


def queued_events(blocks, host: str) -> int:
    """The events of IP address `host` that wait in, or are being run from, the gradio queue of `blocks`."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return 0
    waiting = [e for q in list(queue.event_queue_per_concurrency_id.values()) for e in list(q.queue)]
    running = [e for job in list(queue.active_jobs) if job for e in job]
    return sum(1 for e in waiting + running if client_address(getattr(e, "request", None)) == host)


def door_guard(limits: ServerLimits, blocks=None) -> dict:
    """The per-address limits at the server's door, for `launch(app_kwargs=...)`: on a Space, visitors' addresses
    taken from its proxy (trust_space_proxy), and QueueAdmission (the join rate, and with `blocks` the events held
    in its queue) unless both are off."""
    from starlette.middleware import Middleware

    trust_space_proxy()
    limiter = RateLimiter(limits.ip_joins_per_minute, limits.ip_join_burst) if limits.ip_joins_per_minute > 0 else None
    cap = limits.ip_queued_max if blocks is not None else 0
    if limiter is None and cap <= 0:
        return {}
    queued = (lambda host: queued_events(blocks, host)) if cap > 0 else None
    return {"middleware": [Middleware(QueueAdmission, limiter=limiter, max_queued=cap, queued=queued)]}


class Gate:
    """The server-side checks of a request, before any work: prompt length, then the request rates of the visitor's
    identity (owner id) and of its IP address, so that one address is held even when it sends every request under a
    new identity. A refused request is charged to neither. A rate of 0 turns its limit off."""

    def __init__(self, limits: ServerLimits):
        self.limits, self._lock = limits, threading.Lock()
        self.limiter = RateLimiter(limits.requests_per_minute, limits.burst)
        self.ip_limiter = RateLimiter(limits.ip_requests_per_minute, limits.ip_burst)

    def refusal(self, prompts: list, key: str, cost: float = 1.0, client: str | None = None) -> str | None:
        """A one-line refusal, or None with the request charged to `key` (the owner id) and `client` (its address)."""
        problem = prompt_problem(prompts, self.limits.max_prompt_chars)
        if problem:
            return problem
        checks = [(limiter, k, who) for limiter, k, who, on in (
            (self.limiter, key, "you", self.limits.requests_per_minute > 0),
            (self.ip_limiter, client, "your address", self.limits.ip_requests_per_minute > 0)) if on and k]
        with self._lock:  # check both, then charge both: no race between the two
            waits = [(limiter.wait_s(k, cost, charge=False), who) for limiter, k, who in checks]
            wait, who = max(waits, default=(0.0, ""))
            if wait:
                return too_many(who, wait)
            for limiter, k, _ in checks:
                limiter.wait_s(k, cost)
        return None

    def check(self, prompts: list, key: str, cost: float = 1.0, client: str | None = None) -> None:
        """ValueError with the refusal, if any."""
        problem = self.refusal(prompts, key, cost, client)
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
