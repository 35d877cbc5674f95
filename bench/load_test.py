"""Load test of the web app: well-behaved visitors generate while a fine-tune trains and one hostile client floods.

    python bench/load_test.py [--visitors 20] [--seconds 120] [--rounds 1] [--flood | --no-flood] [--port N] [--json OUT]

Starts `python app.py` (the shipped model, or --model; its runs folder in a temporary one; offline) and, through
gradio_client, each client with its own IP address (X-Forwarded-For, which the server trusts from localhost only):
- a fine-tune: a zip of shapes pictures with captions made here, checked with /check_data and started with
  /start_training from the shipped model, with a time budget of --finetune-minutes (or --finetune-steps steps);
- --visitors well-behaved visitors, each calling /generate for --seconds with the page's defaults (--num-images
  images at 256 px) and a pause of 2-4 s between calls (about 20 a minute, under the per-visitor rate);
- with --flood, one hostile client at one address: --flood-threads requests at a time through gradio_client, each
  sent as soon as the last was answered and under a fresh identity (1 MB prompts, control characters, right-to-left
  and mixed scripts, the largest allowed pictures and animations, values out of bounds, an unknown model, junk
  uploads), and beside them raw queue joins posted as fast as they are answered, which would fill the queue.
With --rounds N the window comes N times on the same server, each with its own fine-tune and an idle pause after
it (--settle seconds), so that memory left after each round shows whether it keeps rising.
Before the window the server warms up (--warm-up full): each kind of request once at its largest, two at a time, so
that both model threads have run each; --warm-up one makes one image only.
Reports the visitors' failed requests (goal 0) and their p50/p95 latency, what became of the hostile requests, the
server's RSS (psutil) with the model loaded, after warm-up, at its peak and at the end, and whether the fine-tune finished. Prints a table,
writes the figures as JSON with --json, and exits 0 when the visitors had no failure, the fine-tune finished, the
queue was never full and the server still serves with no traceback in its log. All clients run on this machine and
take CPU from the server: run it on an idle machine.
tests/test_load_test.py runs it tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import ROOT, free_port  # noqa: E402

PROMPTS = ["grinning face", "cat face", "red apple", "a blue star, google style", "smiling face with sunglasses",
           "pizza", "rocket", "a green heart", "dog face, twitter style", "sun behind cloud"]
STATUS_AT = {"/generate": 2, "/animate": 3}  # where each endpoint's outputs hold the status line
HOSTILE_ADDRESS = "203.0.113.66"
TRAINER_ADDRESS = "198.51.100.250"
WARM_UP_ADDRESSES = ("198.51.100.251", "198.51.100.252", "198.51.100.253", "198.51.100.254")


def visitor_address(i: int) -> str:
    return f"198.51.{100 + i // 200}.{1 + i % 200}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


# The server.


def start_server(model: Path, tmp: Path, port: int) -> tuple:
    """`python app.py` on `port`; returns (process, url, log file) once the page is served."""
    env = dict(os.environ, T2I_MODEL=str(model), T2I_RUNS_DIR=str(tmp / "runs"), GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(tmp / "gradio"),
               GRADIO_ANALYTICS_ENABLED="False", FORWARDED_ALLOW_IPS="127.0.0.1")
    log = tmp / "server.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=tmp, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if serves(url):
            return proc, url, log
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"app.py did not serve within 180 s:\n{log.read_text()[-3000:]}")


def serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


class RssMonitor(threading.Thread):
    """Samples the server's resident memory every second, with its model process's (t2i_app.model_process) but not
    the trainer's; `peak` and `last` in bytes."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(daemon=True)
        self.process, self.peak, self.last, self.done = psutil.Process(pid), 0, 0, threading.Event()
        self.series: list[tuple[float, int]] = []  # (time.monotonic(), bytes) of every sample

    def sample(self) -> int:
        import psutil

        rss = self.process.memory_info().rss
        for child in self.process.children():
            try:
                if "t2i_app.model_process" in " ".join(child.cmdline()):
                    rss += child.memory_info().rss
            except psutil.Error:  # a child that just ended
                pass
        self.last = rss
        self.peak = max(self.peak, self.last)
        self.series.append((time.monotonic(), self.last))
        return self.last

    def at(self, when: float) -> int | None:
        """The last sample taken at or before `when`."""
        before = [rss for t, rss in self.series if t <= when]
        return before[-1] if before else None

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                self.sample()
            except Exception:  # the server ended: the report says so
                return


# The clients.


def client(url: str, address: str, downloads: Path):
    from gradio_client import Client

    return Client(url, verbose=False, headers={"X-Forwarded-For": address}, download_files=str(downloads),
                  analytics_enabled=False)


def visitor(c, i: int, stop_at: float, num_images: int) -> list[dict]:
    """One well-behaved visitor (client `c`): generate, look at the pictures for 2-4 s, again, until `stop_at`."""
    rng, calls = random.Random(i), []
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            gallery, _, status, _ = c.predict(rng.choice(PROMPTS), "default", 0, True, num_images, 1.0, 1.0, 256,
                                              True, None, api_name="/generate")
            error = "" if len(gallery) == num_images and not status.startswith("⚠") else status or "no images"
        except Exception as err:  # any error is a failed request, and the report shows it
            error = f"{type(err).__name__}: {err}"
        calls.append({"visitor": i, "seconds": time.perf_counter() - started, "error": error[:300]})
        time.sleep(rng.uniform(2.0, 4.0))
    return calls


def hostile_requests(rng: random.Random, junk: Path) -> list[tuple[str, tuple]]:
    """(endpoint, arguments) of the flood; the owner ids are forged."""
    from gradio_client import handle_file

    forged = f"{rng.getrandbits(96):024x}-{'0' * 24}"
    odd = "\x00\x07\x1b[2J\u202egrinning face\u200f\ud7ff"
    return [
        ("/generate", ("x" * 1_000_000, "default", 0, True, 1, 1.0, 1.0, 0, True, forged)),
        ("/generate", (odd * 25, "default", 0, True, 4, 1.0, 1.0, 256, True, forged)),
        ("/generate", ("قطة حمراء 猫 кот 🐱 " * 25, "default", 0, True, 16, 2.0, 1.3, 512, True, forged)),
        ("/generate", ("a" * 500, "default", 2**31, False, 16, 0.0, 0.0, 512, False, forged)),
        ("/generate", ("a cat", "../../../etc/passwd", 1, False, 1, 1.0, 1.0, 0, True, "anonymous")),
        ("/generate", ("a cat", "default", -5, False, 10**9, 1e9, -1.0, 99999, True, forged)),
        ("/animate", ("a cat", "a dog", "a car", "x" * 600, 120, 30, 0, True, 2.0, "default", 512, forged)),
        ("/animate", ("grinning face", "", "", "", 120, 30, 0, True, 1.0, "default", 512, forged)),
        ("/check_data", ([handle_file(str(junk))], forged)),
    ]


# The largest request of each kind the page allows: 16 images at 512 px, an animation of 4 prompts, 120 frames at
# 512 px; and the page's default (4 images at 256 px). Two at a time, so that both model threads run each once.
SETTLE_S = 15.0  # idle after the full warm-up and after the window; the app trims its heap every 10 s for a minute
#                 after its last call (t2i_app/pipelines.py)
WARM_UP = [
    [("/generate", ("a red heart", "default", 1, False, 16, 1.0, 1.0, 512, True, None)),
     ("/animate", ("a cat", "a dog", "a car", "a tree", 120, 30, 0, False, 1.0, "default", 512, None))],
    [("/generate", ("grinning face", "default", 2, False, 4, 1.0, 1.0, 256, True, None)),
     ("/animate", ("grinning face", "", "", "", 120, 30, 0, False, 1.0, "default", 512, None))],
]


def warm_up(url: str, work: Path) -> float:
    """Each kind of request once at its largest, on both model threads (WARM_UP), from two addresses of their own.
    Memory these first calls take (buffers sized to the largest request, each thread's scratch space) is the
    server's working set, not growth; `rss_loaded` in the report keeps the figure before it. Returns seconds."""
    started = time.monotonic()

    def run(i: int) -> None:
        for j, (endpoint, args) in enumerate(WARM_UP[i]):
            c = client(url, WARM_UP_ADDRESSES[2 * i + j], work / "warm-up-downloads")
            result = c.predict(*args, api_name=endpoint)
            status = str(result[STATUS_AT[endpoint]])
            if status.startswith("⚠"):
                raise RuntimeError(f"warm-up {endpoint} was refused: {status}")
            c.close()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, range(2)))
    return time.monotonic() - started


def hostile(url: str, thread: int, stop_at: float, work: Path, out: list) -> None:
    """One of the hostile client's threads: the next odd request as soon as the last is answered."""
    rng = random.Random(1000 + thread)
    junk = work / f"junk{thread}.zip"
    junk.write_bytes(b"PK\x03\x04" + os.urandom(200_000))
    c = client(url, HOSTILE_ADDRESS, work / "hostile-downloads")
    while time.monotonic() < stop_at:
        endpoint, args = rng.choice(hostile_requests(rng, junk))
        c.reset_session()  # a fresh identity for every request
        started = time.perf_counter()
        try:
            # A hostile client does not wait for its last answers past the end: the server still has that work.
            result = c.submit(*args, api_name=endpoint).result(timeout=max(1.0, stop_at - time.monotonic() + 5.0))
            status = str(result if isinstance(result, str) else result[STATUS_AT[endpoint]])
            outcome = ("rate limited" if "Too many requests" in status else
                       "refused" if status.startswith("⚠") else "served")
        except TimeoutError:
            outcome, status = "unanswered", "no answer by the end of the test"
        except Exception as err:  # a 429 at the door; values out of bounds, refused by gradio itself
            status = f"{type(err).__name__}: {err}"
            outcome = "rate limited" if "429" in status else "error"
        out.append({"endpoint": endpoint, "outcome": outcome, "seconds": time.perf_counter() - started,
                    "status": status[:200]})
    c.close()


def fn_index(url: str, api_name: str) -> int:
    with urllib.request.urlopen(f"{url}config", timeout=30) as response:
        dependencies = json.load(response)["dependencies"]
    return next(d["id"] for d in dependencies if d.get("api_name") == api_name)


def raw_joins(url: str, generate_fn: int, stop_at: float, out: dict) -> None:
    """The hostile client's other hand: queue joins posted straight, each under a fresh session, as fast as they are
    answered: cheap events that would fill the queue every visitor shares. Counts the answers by HTTP status."""
    import uuid

    import httpx

    data = ["a cat", "default", 0, True, 1, 1.0, 1.0, 0, True, None]
    with httpx.Client(headers={"X-Forwarded-For": HOSTILE_ADDRESS}, timeout=30) as h:
        while time.monotonic() < stop_at:
            try:
                body = {"data": data, "fn_index": generate_fn, "session_hash": uuid.uuid4().hex}
                code = str(h.post(f"{url}gradio_api/queue/join", json=body).status_code)
            except httpx.HTTPError as err:
                code = type(err).__name__
            out[code] = out.get(code, 0) + 1


def start_finetune(c, work: Path, minutes: float, steps: int, batch_size: int) -> None:
    """Upload a zip of 64 shapes pictures with captions and start a fine-tune of the shipped model on it."""
    from gradio_client import handle_file

    from t2i_core.data import shapes

    work.mkdir(parents=True, exist_ok=True)
    folder = shapes.make_shapes_dataset(work / "shapes", n=64, resolution=64)
    data = work / "shapes.zip"
    with zipfile.ZipFile(data, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, path.name)
    report = c.predict([handle_file(str(data))], None, api_name="/check_data")
    if not report.startswith("✔"):
        raise SystemExit(f"the upload was refused: {report}")
    status, _ = c.predict("default", "load test", False, minutes, steps, 2e-4, batch_size, None,
                          api_name="/start_training")
    if "Started" not in status:
        raise SystemExit(f"the fine-tune did not start: {status}")


class FinetuneWatcher(threading.Thread):
    """Polls /run_status every second (client `c`, the run's owner) until the fine-tune ends or `timeout` s pass;
    then `run_status` is its last status and `ended` when the end was seen (time.monotonic)."""

    def __init__(self, c, timeout: float):
        super().__init__(daemon=True)
        self.c, self.deadline, self.run_status, self.ended = c, time.monotonic() + timeout, {}, None

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                self.run_status = self.c.predict(None, api_name="/run_status")
            except Exception as err:  # a failed poll is tried again; the report shows the last status
                self.run_status = {"status": "unknown", "message": f"{type(err).__name__}: {err}"}
            if self.run_status.get("status") not in ("running", "unknown"):
                self.ended = time.monotonic()
                return
            time.sleep(1.0)

    def outcome(self, started: float, window_end: float) -> dict:
        run = self.run_status
        finished = run.get("status") == "finished" and self.ended is not None
        return {"status": run.get("status"), "end": run.get("end"), "step": run.get("step"),
                "max_steps": run.get("max_steps"), "message": run.get("message"), "finished": finished,
                "seconds": round(self.ended - started, 1) if finished else None,
                "within_window": finished and self.ended <= window_end}


# The run.


def measure(args: argparse.Namespace, proc, url: str, work: Path) -> dict:
    """Warm up, then --rounds windows on the same server, each: a fine-tune starts, visitors and flood for
    args.seconds, then the server idles. Everything the report needs."""
    t0, phases = time.monotonic(), {}
    rss = RssMonitor(proc.pid)
    trainer = client(url, TRAINER_ADDRESS, work / "trainer-downloads")
    trainer.predict("grinning face", "default", 0, False, 1, 1.0, 1.0, 0, True, None, api_name="/generate")
    rss_loaded = rss.sample()  # the model loaded, one image made, nothing else yet
    if args.warm_up == "full":
        phases["full warm-up"] = warm_up(url, work)
        time.sleep(args.settle)  # idle, as a server is between visitors: what it frees after a call goes back by then
    rss_start = rss.sample()
    rss.start()
    phases["warm-up"] = time.monotonic() - t0
    rounds = []
    for r in range(args.rounds):
        rounds.append(window(args, proc, url, work, trainer, rss, r))
        if not rounds[-1]["alive"]:
            break
    trainer.close()
    rss.done.set()
    last = rounds[-1]
    joins: dict[str, int] = {}
    for one in rounds:
        for status, n in one["joins"].items():
            joins[status] = joins.get(status, 0) + n
    return {"calls": [c for one in rounds for c in one["calls"]], "flood": [f for one in rounds for f in one["flood"]],
            "joins": joins, "alive": last["alive"], "rss": (rss_start, rss.peak, last["rss_end"]),
            "rss_loaded": rss_loaded, "rss_idle": last["rss_idle"], "rss_quarters": last["rss_quarters"],
            "finetune": last["finetune"], "rounds": rounds,
            "phases": {k: round(v, 1) for k, v in {**phases, **last["phases"]}.items()}}


def window(args: argparse.Namespace, proc, url: str, work: Path, trainer, rss: RssMonitor, r: int) -> dict:
    """One round: the fine-tune starts; visitors and the flood for args.seconds; the fine-tune's end is awaited;
    then the server idles args.settle seconds. Round r's visitors download into their own folder."""
    phases, started = {}, time.monotonic()
    watcher = FinetuneWatcher(trainer, args.seconds + args.finetune_minutes * 60 + 300)
    if args.finetune:
        start_finetune(trainer, work / f"round{r}", args.finetune_minutes, args.finetune_steps, args.finetune_batch)
        watcher.start()
    phases["fine-tune start"] = time.monotonic() - started
    with ThreadPoolExecutor(max(1, args.visitors)) as pool:
        clients = list(pool.map(lambda i: client(url, visitor_address(i), work / f"downloads{r}"),
                                range(args.visitors)))
        window_start = time.monotonic()
        stop_at = window_start + args.seconds
        flood: list[dict] = []
        threads = [threading.Thread(target=hostile, args=(url, t, stop_at, work, flood), daemon=True)
                   for t in range(args.flood_threads if args.flood else 0)]
        joins: dict[str, int] = {}
        if args.flood:
            threads.append(threading.Thread(target=raw_joins, args=(url, fn_index(url, "generate"), stop_at, joins),
                                            daemon=True))
        for t in threads:
            t.start()
        calls = [c for batch in pool.map(lambda i: visitor(clients[i], i, stop_at, args.num_images),
                                         range(args.visitors)) for c in batch]
    phases["visitors"] = time.monotonic() - window_start
    for t in threads:
        t.join(timeout=120)
    phases["flood's last answers"] = time.monotonic() - stop_at
    if args.finetune:
        watcher.join()
        phases["fine-tune end wait"] = time.monotonic() - stop_at
    for c in clients:
        c.close()
    alive = proc.poll() is None and serves(url)
    rss_end = rss.sample() if alive else None
    time.sleep(args.settle)  # idle again: what is left now, the server holds for good
    rss_idle = rss.sample() if alive else None
    # Memory through the visitors' window, in quarters: growth that levels off is buffers and caches filling up;
    # growth that goes on is a leak.
    quarters = [rss.at(window_start + q * args.seconds / 4) for q in range(5)]
    failed = sum(bool(c["error"]) for c in calls)
    finetune = watcher.outcome(started, stop_at) if args.finetune else None
    return {"calls": calls, "flood": list(flood), "joins": joins, "alive": alive, "rss_end": rss_end,
            "rss_idle": rss_idle, "rss_quarters": quarters, "finetune": finetune, "phases": phases,
            "summary": {"visitor_requests": len(calls), "visitor_failures": failed,
                        "rss_end_mb": None if rss_end is None else round(rss_end / 2**20),
                        "rss_idle_after_mb": None if rss_idle is None else round(rss_idle / 2**20),
                        "finetune_finished": None if finetune is None else finetune["finished"]}}


def tracebacks(log: str) -> list[str]:
    """Each traceback in the server's log, from its first line to the exception's."""
    found = []
    for part in log.split("Traceback (most recent call last):")[1:]:
        lines = part.splitlines()
        end = next((i for i, line in enumerate(lines) if line and not line.startswith((" ", "\t"))), len(lines) - 1)
        found.append("\n".join(["Traceback (most recent call last):", *lines[:end + 1]]))
    return found


def summarise(args: argparse.Namespace, raw: dict, log: str) -> dict:
    calls, flood, mb = raw["calls"], raw["flood"], lambda b: None if b is None else round(b / 2**20)
    failed = [c for c in calls if c["error"]]
    seconds = [c["seconds"] for c in calls]
    outcomes = {k: sum(f["outcome"] == k for f in flood)
                for k in ("served", "rate limited", "refused", "error", "unanswered")}
    rss_start, rss_peak, rss_end = raw["rss"]
    finetune = raw["finetune"]
    found = tracebacks(log)
    unexpected = [t for t in found if not t.splitlines()[-1].startswith("gradio.exceptions.Error:")]
    result = {
        "visitors": args.visitors, "seconds": args.seconds, "flood": args.flood, "num_images": args.num_images,
        "visitor_requests": len(calls), "visitor_failures": len(failed),
        "failure_examples": sorted({c["error"] for c in failed})[:5],
        "p50_s": statistics.median(seconds) if seconds else float("nan"), "p95_s": percentile(seconds, 0.95),
        "max_s": max(seconds, default=float("nan")),
        "hostile_requests": len(flood), "hostile": outcomes, "hostile_raw_joins": raw["joins"],
        "hostile_examples": sorted({f"{f['endpoint']} {f['outcome']}: {f['status'][:120]}" for f in flood})[:12],
        "rss_loaded_mb": mb(raw["rss_loaded"]), "warm_up": args.warm_up, "rss_idle_after_mb": mb(raw["rss_idle"]),
        "rss_start_mb": mb(rss_start), "rss_peak_mb": mb(rss_peak), "rss_end_mb": mb(rss_end),
        "rss_growth_mb": None if rss_end is None else mb(rss_end - rss_start),
        "rss_window_quarters_mb": [mb(b) for b in raw.get("rss_quarters", [])],
        "finetune": finetune, "server_alive": raw["alive"], "server_tracebacks": len(unexpected),
        # gradio prints a traceback for each request its components refuse (gr.Error: "Value -5 is less than
        # minimum value 0."): a one-line answer to that client, counted apart.
        "refusal_tracebacks": len(found) - len(unexpected),
        "traceback_excerpts": [t[-1500:] for t in (unexpected or found)[-3:]],
        "hostile_mean_s": {e: round(statistics.mean(f["seconds"] for f in flood if f["endpoint"] == e), 2)
                           for e in sorted({f["endpoint"] for f in flood})},
        "phases_s": raw["phases"],
        "rounds": [one["summary"] for one in raw["rounds"]], "settle_s": args.settle,
    }
    result["ok"] = (result["visitor_failures"] == 0 and len(calls) > 0 and raw["alive"]
                    and result["server_tracebacks"] == 0 and "503" not in raw["joins"]
                    and all(one["finetune"] is None or one["finetune"]["finished"] for one in raw["rounds"]))
    return result


def print_table(r: dict) -> None:
    ft = r["finetune"]
    if ft is None:
        tune = "none started"
    elif ft["finished"]:
        tune = (f"finished ({ft['end']}) at step {ft['step']}, {ft['seconds']:.0f} s after it started, "
                f"{'within' if ft['within_window'] else 'after'} the visitors' window")
    else:
        tune = f"NOT finished: {ft['status']} {ft['message'] or ''}".strip()
    h = r["hostile"]
    rows = [
        ("visitor requests", f"{r['visitor_requests']}", ""),
        ("failed visitor requests", f"{r['visitor_failures']}", "0"),
        ("visitor latency p50 / p95 / max", f"{r['p50_s']:.2f} / {r['p95_s']:.2f} / {r['max_s']:.2f} s", ""),
        ("hostile requests: served / rate limited / refused / errors / unanswered at the end",
         f"{r['hostile_requests']}: {h['served']} / {h['rate limited']} / {h['refused']} / {h['error']} / "
         f"{h['unanswered']}", ""),
        ("hostile raw queue joins by HTTP status (200 joined, 429 refused at the door, 503 queue full)",
         ", ".join(f"{k}: {v}" for k, v in sorted(r["hostile_raw_joins"].items())) or "none", "no 503"),
        ("server RSS with the model loaded (one image)", f"{r['rss_loaded_mb']} MB", ""),
        (f"server RSS after warm-up ({r['warm_up']}) / peak / end",
         f"{r['rss_start_mb']} / {r['rss_peak_mb']} / {r['rss_end_mb']} MB", "no growth"),
        (f"server RSS idle {r['settle_s']:g} s after the window", f"{r['rss_idle_after_mb']} MB", "= after warm-up"),
        (f"server RSS idle {r['settle_s']:g} s after each round ({len(r['rounds'])})",
         " / ".join(str(one["rss_idle_after_mb"]) for one in r["rounds"]) + " MB", "no rise round on round"),
        ("server RSS at each quarter of the visitors' window",
         " / ".join(str(q) for q in r["rss_window_quarters_mb"]) + " MB", "levels off"),
        ("fine-tune", tune, "finishes"),
        ("server still serving; tracebacks in its log", f"{'yes' if r['server_alive'] else 'NO'}; "
                                                        f"{r['server_tracebacks']} (and {r['refusal_tracebacks']} of "
                                                        f"gradio's refusals)", "yes; 0"),
    ]
    print(f"{r['visitors']} visitors x {r['seconds']:g} s ({r['num_images']} images at 256 px a call), flood "
          f"{'on' if r['flood'] else 'off'}; {os.cpu_count()} cores, load average {r['load_before']:.1f} before, "
          f"{r['load_after']:.1f} after")
    print("| figure | value | goal |\n|---|---|---|")
    for name, value, goal in rows:
        print(f"| {name} | {value} | {goal} |")
    for error in r["failure_examples"]:
        print(f"failed: {error}")
    for excerpt in r["traceback_excerpts"]:
        print(f"server traceback:\n{excerpt}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--visitors", type=int, default=20, help="well-behaved visitors at once")
    p.add_argument("--seconds", type=float, default=120, help="how long they generate")
    p.add_argument("--rounds", type=int, default=1,
                   help="windows in a row on the same server, each with its own fine-tune and an idle pause after "
                        "it: memory that rises round on round is a leak, a first-round rise that stays is not")
    p.add_argument("--flood", action=argparse.BooleanOptionalAction, default=True, help="one hostile client floods")
    p.add_argument("--flood-threads", type=int, default=4, help="the hostile client's requests at a time")
    p.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--warm-up", choices=("full", "one"), default="full",
                   help="before the window: each kind of request once at its largest on both model threads (full), "
                        "or one image only (one)")
    p.add_argument("--settle", type=float, default=SETTLE_S,
                   help="idle seconds after the warm-up and after each round before memory is read")
    p.add_argument("--model", type=Path, default=ROOT / "assets" / "model", help="the model the server ships")
    p.add_argument("--num-images", type=int, default=4, help="images per visitor call (the page's default)")
    p.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=True, help="a fine-tune runs")
    p.add_argument("--finetune-minutes", type=float, default=1.5, help="its time budget (1 to 120)")
    p.add_argument("--finetune-steps", type=int, default=20000, help="its step count (1 to 20000)")
    p.add_argument("--finetune-batch", type=int, default=32, help="its batch size")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the load test; returns the figures (tests/test_load_test.py asserts on them)."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="t2i_load_") as tmp:
        work = Path(tmp)
        proc, url, log = start_server(args.model, work, args.port or free_port())
        try:
            raw = measure(args, proc, url, work)
        finally:
            proc.terminate()  # the app stops the fine-tune, if still running, keeping its checkpoint
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        result = summarise(args, raw, log.read_text(errors="replace"))
    result |= {"load_before": load_before, "load_after": os.getloadavg()[0]}
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    raise SystemExit(0 if main()["ok"] else 1)
