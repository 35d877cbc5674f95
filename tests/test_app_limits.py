"""Issue 15 on the app side, without a server: upload caps that hold across uploads, outputs capped, visitors who
never evict each other, owner ids the server signs, per-client request rates and training minutes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from t2i_app import RunManager
from t2i_app.limits import (
    PRIVATE_NETWORKS, Gate, OwnerIds, QueueAdmission, RateLimiter, ServerLimits, TrainingQuota, animate_cost,
    cap_malloc_arenas,
    client_address, door_guard, generate_cost, prompt_problem, queued_events, trust_space_proxy,
)
from t2i_app.retention import tree_bytes
from t2i_app.views import identify
from t2i_core.data.loading import UploadLimits

pytestmark = pytest.mark.timeout(120)


def noisy_zip(path: Path, n: int, seed: int = 0) -> Path:
    """n 48 px noise PNGs (about 7 kB each: they do not compress) with .txt captions."""
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            buf = io.BytesIO()
            Image.frombytes("RGB", (48, 48), os.urandom(48 * 48 * 3)).save(buf, "PNG")
            zf.writestr(f"n{seed}_{i}.png", buf.getvalue())
            zf.writestr(f"n{seed}_{i}.txt", "noise")
    return path


def test_upload_caps_hold_across_archives_uploads_and_owners(tmp_path):
    limits = UploadLimits(max_total_bytes=20_000, max_file_bytes=20_000)
    manager = RunManager(tmp_path / "r", max_bytes=60_000, limits=limits)  # uploads together: 30 kB
    zips = [noisy_zip(tmp_path / f"z{i}.zip", 1, seed=i) for i in range(3)]  # ~7 kB each
    # Three archives in one upload count together: 21 kB is over the 20 kB of one upload.
    refused = manager.prepare_upload(zips, "alice")
    assert not refused.ok and "max_total_bytes" in refused.report
    # One owner's new upload replaces their earlier one: their usage does not add up.
    for _ in range(3):
        assert manager.prepare_upload(zips[:2], "alice").ok
    assert len(list(manager.uploads_dir.iterdir())) == 1
    # Many owners: the uploads folder stays within its 30 kB, whoever sends them.
    results = [manager.prepare_upload(zips[:2], f"owner{i}") for i in range(5)]
    assert [r.ok for r in results].count(False) >= 2
    assert tree_bytes(manager.uploads_dir) <= 30_000


def test_a_failed_upload_leaves_nothing_and_names_no_server_folder(tmp_path):
    manager = RunManager(tmp_path / "r")
    bad = tmp_path / "metadata.csv"
    bad.write_bytes(b"file_name,text\na.png,caf\xe9\n")
    png = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(png)
    broken_zip = tmp_path / "broken.zip"
    broken_zip.write_bytes(b"PK\x03\x04" + os.urandom(200))
    for files in ([bad, png], [broken_zip]):
        upload = manager.prepare_upload(files, "alice")
        assert not upload.ok and "\n" not in upload.report
        assert str(tmp_path) not in upload.report and "/tmp/" not in upload.report, upload.report
        assert list(manager.uploads_dir.iterdir()) == []


def test_outputs_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr("t2i_app.retention.prune_outputs.__defaults__", (50_000,))
    manager = RunManager(tmp_path / "r")
    for _ in range(10):  # within the pruning interval (10 s): outputs/ may outgrow the cap for that long
        (manager.new_output_dir() / "clip.webp").write_bytes(os.urandom(20_000))
    assert tree_bytes(manager.outputs_dir) == 10 * 20_000
    manager.outputs_prune_every_s = 0.0
    for _ in range(10):
        (manager.new_output_dir() / "clip.webp").write_bytes(os.urandom(20_000))
        time.sleep(0.01)
    assert tree_bytes(manager.outputs_dir) <= 50_000 + 20_000  # the cap, plus the newest download


def test_a_forged_owner_id_gets_a_fresh_identity_that_sees_nothing(tmp_path):
    ids = OwnerIds("server-secret")
    alice = ids.issue()
    assert identify(alice, None, ids) == alice  # an id the server issued is kept
    token, _ = alice.split("-")
    for forged in (f"{token}-{'0' * 24}", "anonymous", alice.upper(), OwnerIds("guess").issue(), None):
        request = SimpleNamespace(session_hash="attacker-session")
        got = identify(forged, request, ids)
        assert got != alice and ids.verify(got)
        assert identify(forged, SimpleNamespace(session_hash="another"), ids) != got  # nothing shared either
    manager = RunManager(tmp_path / "r")
    assert manager.owner_ids.verify(manager.owner_ids.issue())
    assert manager.browser_secret() not in manager.owner_ids.browser_state_secret()


def test_one_clients_burst_is_throttled_while_another_still_succeeds():
    clock = [0.0]
    limiter = RateLimiter(per_minute=30, burst=5, clock=lambda: clock[0])
    answers = [limiter.refusal("flooder") for _ in range(50)]
    assert answers[:5] == [None] * 5 and all("wait" in a for a in answers[5:])
    assert limiter.refusal("visitor") is None
    clock[0] += 2.0  # one request's worth at 30 a minute
    assert limiter.refusal("flooder") is None and limiter.refusal("flooder") is not None


def test_one_address_is_throttled_under_any_number_of_identities_while_other_addresses_still_succeed(monkeypatch):
    gate = Gate(ServerLimits(requests_per_minute=30, burst=10, ip_requests_per_minute=60, ip_burst=20))
    clock = [0.0]
    gate.limiter.clock = gate.ip_limiter.clock = lambda: clock[0]
    # A flood from one address, every request under a fresh identity: the per-identity rate never binds.
    answers = [gate.refusal(["a cat"], f"forged-{i}", client="203.0.113.9") for i in range(100)]
    assert answers[:20] == [None] * 20
    assert all(a == "Too many requests from your address at once; wait 1 s and try again." for a in answers[20:])
    # Other visitors, at other addresses, are not held by it; neither is the flooder's address charged for refusals.
    for i in range(5):
        assert gate.refusal(["a dog"], f"visitor-{i}", client=f"198.51.100.{i}") is None
    clock[0] += 1.0  # one request's worth at 60 a minute
    assert gate.refusal(["a cat"], "forged-new", client="203.0.113.9") is None
    assert "wait 1 s" in gate.refusal(["a cat"], "forged-newer", client="203.0.113.9")
    # One identity flooding is held by its own rate first, with the wait it needs; nothing of the address is spent.
    waits = [gate.refusal(["a"], "one-owner", client="192.0.2.1") for _ in range(12)]
    assert waits[:10] == [None] * 10 and waits[10] == "Too many requests from you at once; wait 2 s and try again."
    assert gate.ip_limiter.wait_s("192.0.2.1", 10, charge=False) == 0.0  # 10 of its 20 left
    # A refused prompt costs nothing either; a rate of 0 turns that limit off.
    assert "characters long" in gate.refusal(["x" * 501], "p", client="192.0.2.2")
    off = Gate(ServerLimits(ip_requests_per_minute=0))
    assert all(off.refusal(["a"], f"id-{i}", client="203.0.113.9") is None for i in range(200))
    monkeypatch.setenv("T2I_IP_RATE_PER_MIN", "6")
    monkeypatch.setenv("T2I_IP_RATE_BURST", "3")
    assert (ServerLimits.from_env().ip_requests_per_minute, ServerLimits.from_env().ip_burst) == (6.0, 3)


def test_a_request_costs_in_proportion_to_the_pixels_it_makes():
    assert (generate_cost(4, 256), generate_cost(1, 0), generate_cost(16, 512)) == (1, 1, 16)
    assert (animate_cost(24, 256), animate_cost(120, 512), animate_cost("many", None)) == (2, 40, 2)
    gate = Gate(ServerLimits(requests_per_minute=30, burst=10, ip_requests_per_minute=120, ip_burst=40))
    clock = [0.0]
    gate.limiter.clock = gate.ip_limiter.clock = lambda: clock[0]
    heaviest = animate_cost(120, 512)
    # It takes a whole bucket, of the identity (10) and of the address (40): one at once, then a wait.
    assert gate.refusal(["a"], "alice", heaviest, "192.0.2.5") is None
    assert "wait 20 s" in gate.refusal(["a"], "alice", heaviest, "192.0.2.5")
    assert gate.refusal(["a"], "bob", heaviest, "192.0.2.5") == (
        "Too many requests from your address at once; wait 20 s and try again.")  # new identities do not help
    assert gate.refusal(["a"], "carol", generate_cost(4, 256), "198.51.100.3") is None  # elsewhere, the defaults
    clock[0] += 20.0
    assert gate.refusal(["a"], "bob", heaviest, "192.0.2.5") is None


def test_one_address_cannot_fill_the_queue_that_every_visitor_shares():

    passed = []

    async def app(scope, receive, send):
        passed.append((scope["client"][0], scope["path"]))

    door = QueueAdmission(app, RateLimiter(per_minute=600, burst=5))

    def call(host: str, path: str = "/gradio_api/queue/join", method: str = "POST") -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "client": (host, 40000)}
        asyncio.run(door(scope, None, send))
        return sent

    answers = [call("203.0.113.9") for _ in range(50)]
    assert answers[:5] == [[]] * 5 and len(passed) == 5  # the first five joined the queue
    refused = answers[5]
    assert refused[0]["status"] == 429 and (b"retry-after", b"1") in refused[0]["headers"]
    assert json.loads(refused[1]["body"])["detail"] == (
        "⚠ Too many requests from your address at once; wait 1 s and try again.")
    assert all(a and a[0]["status"] == 429 for a in answers[5:]) and len(passed) == 5  # none reached the queue
    # Another address joins; the flooder's page, files and event streams are served as usual.
    assert call("198.51.100.4") == [] and call("203.0.113.9", "/gradio_api/queue/data", "GET") == []
    assert call("203.0.113.9", "/gradio_api/upload") == [] and len(passed) == 8
    assert door_guard(ServerLimits(ip_joins_per_minute=0)) == {}
    assert door_guard(ServerLimits())["middleware"][0].cls is QueueAdmission


def test_one_address_holds_only_so_many_events_in_the_queue_however_slowly_it_joins():
    """The join rate alone let one address keep a third of the queue: at most `ip_queued_max` of its events may
    wait or run at once, counted in gradio's own queue; other addresses and its other calls pass."""
    event = lambda host: SimpleNamespace(request=SimpleNamespace(client=SimpleNamespace(host=host)))  # noqa: E731
    waiting = [event("203.0.113.9"), event("198.51.100.4"), event("203.0.113.9")]
    queue = SimpleNamespace(event_queue_per_concurrency_id={"gen": SimpleNamespace(queue=waiting)},
                            active_jobs=[None, [event("203.0.113.9")]])
    blocks = SimpleNamespace(_queue=queue)
    assert queued_events(blocks, "203.0.113.9") == 3 and queued_events(blocks, "192.0.2.1") == 0
    assert queued_events(SimpleNamespace(), "203.0.113.9") == 0  # no queue yet: nothing held
    passed = []

    async def app(scope, receive, send):
        passed.append(scope["client"][0])
        waiting.append(event(scope["client"][0]))  # the join takes its place in the queue

    guard = door_guard(ServerLimits(ip_queued_max=4), blocks)["middleware"][0]
    door = guard.cls(app, **guard.kwargs)

    def join(host: str) -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(door({"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "client": (host, 1)},
                         None, send))
        return sent

    assert join("203.0.113.9") == [] and passed == ["203.0.113.9"]  # 3 held: a fourth joins
    refused = join("203.0.113.9")
    assert refused[0]["status"] == 429 and len(passed) == 1
    assert json.loads(refused[1]["body"])["detail"] == (
        "⚠ Your address already has 4 requests waiting or running; wait for them to finish and try again.")
    assert join("198.51.100.4") == [] and passed[-1] == "198.51.100.4"  # another address still joins
    waiting[:] = [e for e in waiting if e.request.client.host != "203.0.113.9"]  # its events finished
    assert join("203.0.113.9") == [] and len(passed) == 3
    assert door_guard(ServerLimits(ip_joins_per_minute=0, ip_queued_max=0), blocks) == {}
    assert door_guard(ServerLimits(ip_joins_per_minute=0)) == {}  # no queue to count in


def test_the_address_is_the_requests_and_a_space_trusts_its_proxy_for_it():
    assert client_address(SimpleNamespace(client=SimpleNamespace(host="198.51.100.7"))) == "198.51.100.7"
    assert client_address(None) is None and client_address(SimpleNamespace(client=None)) is None
    env = {}
    trust_space_proxy(env)
    assert env == {}  # not a Space: uvicorn's own default (localhost only) stays
    env = {"SPACE_ID": "someone/t2i"}
    trust_space_proxy(env)
    assert env["FORWARDED_ALLOW_IPS"] == PRIVATE_NETWORKS and "10.0.0.0/8" in PRIVATE_NETWORKS
    env = {"SPACE_ID": "someone/t2i", "FORWARDED_ALLOW_IPS": "10.1.2.3"}
    trust_space_proxy(env)
    assert env["FORWARDED_ALLOW_IPS"] == "10.1.2.3"  # the operator's setting wins
    # What uvicorn then does with it: the right-most address that is not a trusted proxy is the visitor's.
    from uvicorn.middleware.proxy_headers import _TrustedHosts

    hosts = _TrustedHosts(PRIVATE_NETWORKS)
    assert hosts.get_trusted_client_address("1.2.3.4, 198.51.100.7, 10.16.3.80")[0] == "198.51.100.7"


def test_prompt_length_is_limited_before_any_work():
    started = time.perf_counter()
    message = prompt_problem(["x" * 1_000_000], 500)
    assert time.perf_counter() - started < 0.1 and "1,000,000 characters" in message
    assert prompt_problem(["grinning face", None], 500) is None


def test_the_training_slot_cannot_be_held_forever_under_new_owner_ids(tmp_path):
    quota = TrainingQuota(minutes=90)
    for _ in range(3):  # 3 x 30 min under three fresh ids, from one address
        assert quota.refusal("10.0.0.7", 30) is None
        quota.charge("10.0.0.7", 30)
    assert "try again in about" in quota.refusal("10.0.0.7", 30)
    assert quota.refusal("10.0.0.8", 30) is None  # another visitor still gets a turn
    manager = RunManager(tmp_path / "r", server_limits=ServerLimits(max_run_minutes=60, client_train_minutes=60))
    with pytest.raises(ValueError, match="at most 60 minutes"):
        manager.start(manager.owner_ids.issue(), "x", minutes=120, client="10.0.0.7")
    manager.train_quota.charge("10.0.0.7", 60)
    with pytest.raises(ValueError, match="minutes of training"):
        manager.start(manager.owner_ids.issue(), "x", minutes=10, client="10.0.0.7")


def test_malloc_arenas_are_capped_on_glibc_unless_the_operator_says_otherwise():
    import platform

    glibc = platform.libc_ver()[0] == "glibc"
    assert cap_malloc_arenas({}) is glibc
    assert cap_malloc_arenas({"T2I_MALLOC_ARENAS": "0"}) is False
    assert cap_malloc_arenas({"MALLOC_ARENA_MAX": "4"}) is False  # the operator's own setting stands


def test_a_flood_of_fresh_sessions_keeps_only_so_many_pages_in_memory(monkeypatch):
    """gradio keeps each session's copy of the page (about 150 KB for ours) for up to 10,000 sessions: a client that
    joins under a fresh session hash each time grew the server by 1.5 GB. The app keeps `sessions_max`, oldest out."""
    import gc
    import tracemalloc

    import app
    from gradio.state_holder import StateHolder

    monkeypatch.setenv("T2I_SESSIONS_MAX", "5")
    limits = ServerLimits.from_env()
    assert limits.sessions_max == 5 and ServerLimits().sessions_max == 1000
    assert "sessions_max" in app.main.__code__.co_names  # main() hands it to launch(state_session_capacity=...)
    monkeypatch.setattr(app.demo, "state_session_capacity", limits.sessions_max)
    holder = StateHolder()
    holder.set_blocks(app.demo)
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(5):
            holder[f"visitor-{i}"]
        kept_5 = tracemalloc.get_traced_memory()[0]
        for i in range(30):
            holder[f"flood-{i}"]
        gc.collect()
        kept_after_flood = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(holder.session_data) == 5 and "flood-29" in holder and "visitor-0" not in holder
    assert kept_after_flood < 1.5 * kept_5, (kept_5, kept_after_flood)  # seven times the sessions, no more memory


def test_model_calls_from_many_server_threads_run_on_a_few_long_lived_threads(text_encoder):
    """Each thread that once ran the model keeps its own buffers, so the app runs every model call on the cache's two
    model threads, whichever of the server's many worker threads answers the event."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from t2i_app import PipelineCache
    from t2i_core import T2IPipeline
    from t2i_core.models.generator import Generator

    pipe = T2IPipeline(Generator(resolution=16, channels=(32, 16, 16), attention_resolutions=(8,), z_dim=8, w_dim=16),
                       text_encoder)
    cache = PipelineCache(model_threads=2)

    def generate_where(i: int) -> tuple[int, int]:
        here = threading.get_ident()
        there = cache.run(lambda: (threading.get_ident(), len(pipe(f"prompt {i}", num_images=2, seed=i).images)))
        assert there[0] != here and there[1] == 2
        return there[0]

    with ThreadPoolExecutor(max_workers=12) as server:
        threads = set(server.map(generate_where, range(36)))
    assert 1 <= len(threads) <= 2
    # The model thread's errors reach the caller as they are: the app turns a ValueError into one clear message.
    with pytest.raises(ValueError, match="num_images"):
        cache.run(pipe, "a red apple", num_images=0)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the RSS from /proc (Linux)")
def test_memory_a_model_call_frees_is_handed_back_to_the_system():
    from t2i_app import PipelineCache
    from t2i_app.pipelines import trim_heap

    def big_call(keep: list) -> int:
        # 3,000 blocks of 64 KB (under malloc's mmap threshold, so from its heap); every 16th stays alive, so the heap
        # is full of holes that free() alone does not give back (as after a request of 16 images at 512 px).
        blocks = [bytearray(64 * 1024) for _ in range(3000)]
        keep += blocks[::16]
        return len(blocks)

    if not trim_heap():
        pytest.skip("not glibc")
    keep: list = []
    before = rss_mb()
    assert PipelineCache(trim=False).run(big_call, keep) == 3000
    held = rss_mb() - before
    assert held > 150  # the premise: without a trim the freed blocks stay in the process
    keep.clear()
    before = rss_mb()
    cache = PipelineCache(trim_every=1.0)
    assert cache.run(big_call, keep) == 3000
    assert rss_mb() - before < 40  # only the kept 16th (about 12 MB) and the allocator's own
    # What another thread frees after a call (the server sending pictures out) goes back a moment later.
    keep.clear()
    before = rss_mb()
    cache.run(lambda: None)
    big_call(keep)  # here, on this thread, after the call
    assert rss_mb() - before > 150
    deadline = time.monotonic() + 10
    while rss_mb() - before > 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rss_mb() - before < 40
