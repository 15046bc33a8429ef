"""A short soak (the full 200-turn run is bench/soak.py): memory on every turn, then a new process finds all."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_keeps_every_memory_across_processes(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--turns", "8", "--cube",
                          str(tmp_path / "cube"), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["turns_completed"] == 8 and result["errors"] == [] and result["problems"] == []
    assert result["memories_stored"] >= 8 and result["missing"] == []
    assert result["memories_found_by_new_process"] >= result["memories_stored"]
    assert sum(row["retrieved"] > 0 for row in result["per_turn"]) == 7  # every turn after the first
