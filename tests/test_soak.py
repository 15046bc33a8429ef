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


def test_rescore_reapplies_the_grounding_rule_to_recorded_items(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import soak

    assert soak.message(0).startswith("My friend Ana moved to Lisbon")
    wrong_person = "The user moved to Lisbon last year."  # the friend's move put on the user
    faithful = "My friend Ana moved to Lisbon last year."
    rows = [{"turn": 0, "kept": [wrong_person], "rejected": [faithful], "extracted_kept": 1,
             "extracted_rejected": 1},
            {"turn": 2, "kept": [], "rejected": [], "extracted_kept": 0, "extracted_rejected": 0}]
    path = tmp_path / "soak.json"
    path.write_text(json.dumps({"per_turn": rows, "extracted_kept": 1, "extracted_rejected_ungrounded": 1}))
    assert soak.main(["--rescore", "--out", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["per_turn"][0]["kept"] == [faithful] and result["per_turn"][0]["rejected"] == [wrong_person]
    assert result["extracted_kept"] == 1 and result["extracted_rejected_ungrounded"] == 1
    assert "1 turn(s) changed" in result["rescored"]
    assert result["grounding_rule_heldout"]["items"] > 0
