"""bench/load_test.py, tiny: two visitors generate for two rounds of six seconds, each while a two-step fine-tune trains, and one hostile
client floods from its own address; the visitors lose nothing, the flood is held, the server lives on."""

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_visitors_are_served_while_a_fine_tune_trains_and_a_hostile_client_floods(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("T2I_TRAIN_THREADS", "1")
    # The server's door at 2 joins a second, burst 10: ten seconds of raw joins meet it however busy the machine is.
    monkeypatch.setenv("T2I_IP_JOINS_PER_MIN", "120")
    monkeypatch.setenv("T2I_IP_JOIN_BURST", "10")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import load_test

    out = tmp_path / "load.json"
    r = load_test.main(["--visitors", "2", "--seconds", "6", "--rounds", "2", "--model", str(tiny_model_dir), "--num-images", "2",
                        "--flood-threads", "2", "--finetune-minutes", "1", "--finetune-steps", "2",
                        "--finetune-batch", "8", "--warm-up", "one", "--settle", "2", "--json", str(out)])
    assert r["visitor_requests"] >= 2 and r["visitor_failures"] == 0, r["failure_examples"]
    assert math.isfinite(r["p50_s"]) and math.isfinite(r["p95_s"]) and r["p95_s"] < 60
    assert r["server_alive"] and r["server_tracebacks"] == 0
    assert r["finetune"]["finished"] and r["finetune"]["step"] == 2, r["finetune"]
    # The flood came under fresh identities, so its address is what held it: at the door and in the rate.
    assert r["hostile"]["rate limited"] > 0, r["hostile_examples"]
    assert r["hostile_raw_joins"].get("429", 0) > 0 and "503" not in r["hostile_raw_joins"], r["hostile_raw_joins"]
    assert 0 < r["rss_start_mb"] <= r["rss_peak_mb"] and r["rss_end_mb"] > 0
    assert len(r["rss_window_quarters_mb"]) == 5 and all(q and q > 0 for q in r["rss_window_quarters_mb"])
    # Two rounds on the same server, each with its own fine-tune and an idle figure after it.
    assert [one["finetune_finished"] for one in r["rounds"]] == [True, True], r["rounds"]
    assert all(one["visitor_requests"] >= 1 and one["rss_idle_after_mb"] > 0 for one in r["rounds"]), r["rounds"]
    assert r["ok"] and json.loads(out.read_text())["visitor_failures"] == 0
