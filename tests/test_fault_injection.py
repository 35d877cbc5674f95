"""SIGKILL at random points of a tiny training run and in the middle of checkpoint writes, then resume
(bench/fault_injection.py, a few rounds here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_every_resume_after_a_sigkill_succeeds_and_the_final_model_loads(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fault_injection.py"), "--rounds", "4", "--seed", "1",
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert result["ok"] and result["resumes"] >= 4 and result["weights_finite"]
    assert all(round_["after"] >= round_["before"] for round_ in result["rounds"])
    # Two of the rounds were killed while a checkpoint write was held half done: one inside the checkpoint's
    # temporary folder, one with the model folder written but not yet swapped in. Each next round resumed.
    writes = [r for r in result["rounds"] if r["kind"] != "random"]
    assert result["write_rounds_killed_mid_write"] == 2 and len(writes) == 2
    assert sorted(name.split("-")[1] for r in writes for name in r["tmp_at_kill"]) == ["checkpoint", "model"]
    assert result["tmp_left"] == [] and result["skipped_damaged"] == 0
