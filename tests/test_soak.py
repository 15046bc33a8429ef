"""A short soak (the full 200-turn run is bench/soak.py): memory on every turn, then a new process finds all,
and every user message is there verbatim."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_keeps_every_memory_and_message_across_processes(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--turns", "4", "--cube",
                          str(tmp_path / "cube"), "--max-new-tokens", "8", "--extraction-max-new-tokens", "48",
                          "--out", str(out)], capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["turns_completed"] == 4 and result["errors"] == [] and result["problems"] == []
    assert result["user_messages"] == 4 and result["user_messages_lost"] == 0 and result["missing"] == []
    assert result["message_kinds"] == {"episodic": 3, "episodic-question": 1}
    assert result["extraction_paths"]["skipped"] == 1  # the question costs no extractor call
    assert sum(result["extraction_paths"].values()) == 4
    assert result["memories_found_by_new_process"] >= result["memories_stored"] >= 4
    assert sum(row["retrieved"] > 0 for row in result["per_turn"]) == 3  # every turn after the first
    assert {"store", "generate", "extract"} <= set(result["step_seconds_median"])
