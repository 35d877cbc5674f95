"""SIGKILL at random points of a tiny training run, then resume (bench/fault_injection.py, a few rounds here)."""

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
