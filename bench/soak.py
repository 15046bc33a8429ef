"""Soak: a long conversation with memory on, then a NEW process reopens the cube and finds every memory.

    python bench/soak.py --turns 200 --out bench/results/soak_faithful_200.json

Runs on the embedded default model (CPU) unless --model is given. Records per-turn timings (per step and
their medians), the memory count, RSS after every turn (growth = last - first), every problem a turn
reported, and whether the reopened cube holds every id that any turn stored. Faithful-memory figures: user
messages lost (each message must be in the reopened cube verbatim, with its turn as provenance), the
extraction path rates, extracted items kept / rejected as ungrounded, and the grounding rule's precision /
recall on the held-out half of the labelled set (bench/grounding_eval.py). The rates of the extractor
before issue 12 (MemOS's prompt, unconstrained, salvaging broken JSON) are read from the committed
`--before` results file. Exit status 1 if a turn raised or a memory or message went missing.
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


def reopen_items(cube: Path) -> list[dict]:
    """(id, text, kind, source) of every memory, as a fresh process opening the cube finds them."""
    code = ("import json,sys; from magistral_kit.memory.cube import open_memory; m=open_memory(sys.argv[1]); "
            "t=m.items(); print(json.dumps([{'id': r.id, 'text': r.text, 'kind': r.kind, 'source': list(r.source)}"
            " for r in t.itertuples()])); m.close()")
    out = subprocess.run([sys.executable, "-c", code, str(cube)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reopen_ids(cube: Path) -> list[str]:
    return [r["id"] for r in reopen_items(cube)]


def grounding_heldout() -> dict | None:
    """The grounding rule on the held-out half of the labelled set (None when the labels are absent)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from grounding_eval import LABELS, load, scores

    if not LABELS.exists():
        return None
    res = scores([r for r in load() if r["split"] == "heldout"])
    return {k: res[k] for k in ("items", "precision", "recall", "ungrounded_caught")}


def _extraction_totals(rows: list[dict]) -> dict[str, int]:
    return {"extracted_kept": sum(r["extracted_kept"] for r in rows),
            "extracted_rejected_ungrounded": sum(r["extracted_rejected"] for r in rows)}


def _step_medians(rows: list[dict]) -> dict[str, float]:
    steps = sorted({k for r in rows for k in r if k.startswith("s_")})
    return {k[2:]: statistics.median([r[k] for r in rows if k in r]) for k in steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--cube", default="", help="cube folder (default: a fresh temporary folder)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--extraction-max-new-tokens", type=int, default=None,
                        help="default: KitConfig's extraction_max_new_tokens")
    parser.add_argument("--before", default="bench/results/soak_200.json",
                        help="results file of the extractor before issue 12 (its extraction_paths)")
    parser.add_argument("--out", default="bench/results/soak.json")
    parser.add_argument("--rescore", action="store_true",
                        help="re-apply the current grounding rule to the items of the --out results (the "
                             "extractor's outputs depend only on the message, so they are the same; the "
                             "verdicts are what changed) and update its counts; no chat is run")
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(Path(args.out))
    cube = Path(args.cube or tempfile.mkdtemp(prefix="soak-cube-"))
    extra = ({"extraction_max_new_tokens": args.extraction_max_new_tokens}
             if args.extraction_max_new_tokens else {})
    config = KitConfig(model=args.model, cube_dir=str(cube), temperature=0.0, max_new_tokens=args.max_new_tokens,
                       **extra)
    before = None
    if Path(args.before).exists():
        old = json.loads(Path(args.before).read_text())
        if "salvaged" in old.get("extraction_paths", {}):
            before = {"file": args.before, "turns": old["turns"], "extraction_paths": old["extraction_paths"]}
    rows, stored, errors, sent = [], [], [], []
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
            sent.append((turn.id, turn.user))
            ex = turn.extraction
            rows.append({"turn": i, "retrieved": len(turn.retrieved), "stored": len(turn.stored_ids),
                         "message_kind": turn.message_kind,
                         "extraction": ex.path if ex else None,
                         "extracted_kept": len(ex.items) if ex else 0,
                         "extracted_rejected": len(ex.rejected) if ex else 0,
                         "extraction_tokens": ex.tokens_out if ex else None,
                         "rejected": [i.text for i in ex.rejected] if ex else [],
                         "kept": [i.text for i in ex.items] if ex else [],
                         "superseded": len(turn.superseded),
                         "problems": turn.problems, "rss_gib": turn.memory.rss_gib,
                         "memories": len(chat.memory), **{f"s_{k}": v for k, v in turn.timings.steps.items()}})
            if i % 10 == 0:
                print(f"turn {i}: {len(chat.memory)} memories, RSS {turn.memory.rss_gib:.2f} GiB, "
                      f"{turn.timings.total:.1f} s", flush=True)
    finally:
        chat.close()
    reopened = reopen_items(cube)
    found = {r["id"] for r in reopened}
    missing = sorted(set(stored) - found)
    verbatim = {(r["source"][0] if r["source"] else None, r["text"]) for r in reopened
                if r["kind"] in ("episodic", "episodic-question")}
    lost = [f"{tid}: {text[:80]}" for tid, text in sent if (tid, text) not in verbatim]
    memory_steps = [r.get("s_retrieve", 0) + r.get("s_prompt", 0) + r.get("s_store", 0) for r in rows]
    result = {
        "turns": args.turns, "turns_completed": len(rows), "errors": errors,
        "problems": [p for r in rows for p in r["problems"]],
        "memories_stored": len(stored), "memories_found_by_new_process": len(found), "missing": missing,
        "rss_first_gib": rows[0]["rss_gib"] if rows else None, "rss_last_gib": rows[-1]["rss_gib"] if rows else None,
        "rss_growth_gib": (rows[-1]["rss_gib"] - rows[0]["rss_gib"]) if rows else None,
        "user_messages": len(sent), "user_messages_lost": len(lost), "lost": lost,
        "message_kinds": {k: sum(r["message_kind"] == k for r in rows) for k in ("episodic", "episodic-question")},
        "extraction_paths": {p: sum(r["extraction"] == p for r in rows)
                             for p in ("json", "empty", "invalid", "error", "skipped")},
        "extraction_paths_before": before,
        **_extraction_totals(rows),
        "superseded": sum(r["superseded"] for r in rows),
        "grounding_rule_heldout": grounding_heldout(),
        "step_seconds_median": _step_medians(rows),
        "extraction_tokens_median": statistics.median(t) if (t := [r["extraction_tokens"] for r in rows
                                                                    if r.get("extraction_tokens")]) else None,
        "extraction_backend": "xgrammar", "extraction_constrained": config.extraction_constrained,
        "extraction_max_new_tokens": config.extraction_max_new_tokens,
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
    return 0 if not errors and not missing and not lost else 1


def rescore(path: Path) -> int:
    """Apply the grounding rule as it is now to every extracted item a finished soak recorded."""
    from magistral_kit.memory.grounding import check

    result = json.loads(path.read_text())
    changed = 0
    for row in result["per_turn"]:
        items = row["kept"] + row["rejected"]
        if not items:
            continue
        verdicts = [check(t, message(row["turn"])).grounded for t in items]
        kept = [t for t, ok in zip(items, verdicts) if ok]
        changed += kept != row["kept"]
        row["kept"], row["rejected"] = kept, [t for t, ok in zip(items, verdicts) if not ok]
        row["extracted_kept"], row["extracted_rejected"] = len(row["kept"]), len(row["rejected"])
    result.update(_extraction_totals(result["per_turn"]))
    result["grounding_rule_heldout"] = grounding_heldout()
    commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short",
                             "HEAD"], capture_output=True, text=True).stdout.strip()
    result["rescored"] = (f"verdicts re-applied with the grounding rule at commit {commit or '?'} ({changed} "
                          f"turn(s) changed); the stored cube of the run followed the rule at run time")
    path.write_text(json.dumps(result, indent=1))
    print(result["rescored"], {k: result[k] for k in ("extracted_kept", "extracted_rejected_ungrounded")})
    return 0


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
    if "user_messages_lost" in result:  # the faithful-memory flow records these; the earlier soak did not
        kinds = ", ".join(f"{k} {v}" for k, v in result.get("message_kinds", {}).items())
        rows += [f"| user messages lost | {result['user_messages_lost']} of {result['user_messages']} "
                 f"(stored as {kinds}) |",
                 f"| extracted items kept / rejected as ungrounded | {result['extracted_kept']} / "
                 f"{result['extracted_rejected_ungrounded']} |",
                 f"| older memories archived by a restatement | {result.get('superseded', 0)} |"]
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in result.get("step_seconds_median", {}).items())
        if steps:
            rows.append(f"| per-step time of a turn, medians | {steps} |")
        if result.get("extraction_tokens_median"):
            rows.append(f"| extractor output per extraction, median | {result['extraction_tokens_median']:.0f} "
                        f"tokens (cap {result['extraction_max_new_tokens']}) |")
        if result.get("rescored"):
            rows.append(f"| grounding verdicts | {result['rescored']} |")
        g = result.get("grounding_rule_heldout")
        if g:
            rows.append(f"| grounding rule on the held-out labels | precision {g['precision']:.3f}, recall "
                        f"{g['recall']:.3f} ({g['items']} items) |")
    load = m.get("load_average")
    return "\n".join(rows) + (f"\n\nModel {result['model']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}"
                              + (f", load average at the start {load}" if load else "") + ".")


if __name__ == "__main__":
    raise SystemExit(main())
