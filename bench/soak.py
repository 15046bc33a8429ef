"""Soak: a long conversation with memory on, then a NEW process reopens the cube and finds every memory.

    python bench/soak.py --turns 200 --out bench/results/soak_200.json

Runs on the embedded default model (CPU) unless --model is given. Records per-turn timings, the memory
count, RSS after every turn (growth = last - first), every problem a turn reported, and whether the reopened
cube holds every id that any turn stored. Exit status 1 if a turn raised or a memory went missing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from magistral_kit.chat.session import open_chat
from magistral_kit.config import KitConfig
from magistral_kit.diagnostics import machine_info

PEOPLE = ["Ana", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun"]
PLACES = ["Lisbon", "Oslo", "Kyoto", "Quito", "Accra", "Hobart", "Tartu", "Cusco", "Izmir", "Perth"]
HOBBIES = ["pottery", "chess", "rowing", "birding", "baking", "climbing", "origami", "salsa", "archery", "sailing"]


def message(i: int) -> str:
    """A deterministic stream of facts and questions about them (a question every third turn)."""
    p, q, h = PEOPLE[i % 10], PLACES[(i * 3) % 10], HOBBIES[(i * 7) % 10]
    if i % 3 == 2:
        return f"Remind me: where does {PEOPLE[(i - 2) % 10]} live, and what is their hobby?"
    return f"My friend {p} moved to {q} last year and now spends weekends on {h}. Turn {i}."


def reopen_ids(cube: Path) -> list[str]:
    """Ids found by a fresh process opening the cube (the soak's own process has released it)."""
    code = ("import json,sys; from magistral_kit.memory.cube import open_memory; m=open_memory(sys.argv[1]); "
            "print(json.dumps(list(m.items()['id']))); m.close()")
    out = subprocess.run([sys.executable, "-c", code, str(cube)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--cube", default="", help="cube folder (default: a fresh temporary folder)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--extraction-max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="bench/results/soak.json")
    args = parser.parse_args(argv)
    cube = Path(args.cube or tempfile.mkdtemp(prefix="soak-cube-"))
    config = KitConfig(model=args.model, cube_dir=str(cube), temperature=0.0, max_new_tokens=args.max_new_tokens,
                       extraction_max_new_tokens=args.extraction_max_new_tokens)
    rows, stored, errors = [], [], []
    start = time.perf_counter()
    chat = open_chat(config, progress=False)
    try:
        for i in range(args.turns):
            try:
                turn = chat.send(message(i))
            except Exception as exc:  # the soak's point: count it, keep going
                errors.append(f"turn {i}: {type(exc).__name__}: {exc}")
                continue
            stored += turn.stored_ids
            rows.append({"turn": i, "retrieved": len(turn.retrieved), "stored": len(turn.stored_ids),
                         "extraction": turn.extraction.path if turn.extraction else None,
                         "problems": turn.problems, "rss_gib": turn.memory.rss_gib,
                         "memories": len(chat.memory), **{f"s_{k}": v for k, v in turn.timings.steps.items()}})
            if i % 10 == 0:
                print(f"turn {i}: {len(chat.memory)} memories, RSS {turn.memory.rss_gib:.2f} GiB, "
                      f"{turn.timings.total:.1f} s", flush=True)
    finally:
        chat.close()
    found = set(reopen_ids(cube))
    missing = sorted(set(stored) - found)
    memory_steps = [r.get("s_retrieve", 0) + r.get("s_prompt", 0) + r.get("s_store", 0) for r in rows]
    result = {
        "turns": args.turns, "turns_completed": len(rows), "errors": errors,
        "problems": [p for r in rows for p in r["problems"]],
        "memories_stored": len(stored), "memories_found_by_new_process": len(found), "missing": missing,
        "rss_first_gib": rows[0]["rss_gib"] if rows else None, "rss_last_gib": rows[-1]["rss_gib"] if rows else None,
        "rss_growth_gib": (rows[-1]["rss_gib"] - rows[0]["rss_gib"]) if rows else None,
        "extraction_paths": {p: sum(r["extraction"] == p for r in rows) for p in ("json", "salvaged", "raw")},
        "seconds_total": time.perf_counter() - start,
        "turn_seconds_median": statistics.median(sum(v for k, v in r.items() if k.startswith("s_")) for r in rows)
        if rows else None,
        "memory_layer_ms_median": statistics.median(memory_steps) * 1000 if memory_steps else None,
        "model": args.model, "machine": machine_info(), "per_turn": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_turn", "machine")}, indent=1))
    return 0 if not errors and not missing else 1


def markdown_table(result: dict) -> str:
    """README's soak table (bench/report.py)."""
    m = result["machine"]
    paths = ", ".join(f"{k} {v}" for k, v in result["extraction_paths"].items())
    rows = [
        "| soak | result |",
        "|---|---|",
        f"| turns completed | {result['turns_completed']} of {result['turns']}, {len(result['errors'])} errors, "
        f"{len(result['problems'])} problems |",
        f"| memories stored / found by a new process | {result['memories_stored']} / "
        f"{result['memories_found_by_new_process']} ({len(result['missing'])} missing) |",
        f"| process RSS, first → last turn | {result['rss_first_gib']:.2f} → {result['rss_last_gib']:.2f} GiB "
        f"({result['rss_growth_gib']:+.2f}) |",
        f"| turn, median (generation and extraction included) | {result['turn_seconds_median']:.1f} s |",
        f"| memory layer per turn, median | {result['memory_layer_ms_median']:.0f} ms |",
        f"| extraction paths | {paths} |",
    ]
    return "\n".join(rows) + (f"\n\nModel {result['model']}, {m['cpu']}, {m['cores']} cores, Python {m['python']} "
                              "(`bench/results/soak_200.json`).")


if __name__ == "__main__":
    raise SystemExit(main())
