"""What one extraction costs on the embedded model, with the committed schema and with `schema_for`.

    python bench/extraction_cost.py --out bench/results/extraction_cost.json

The chat's extractor (greedy, decoding constrained with xgrammar) runs on the same messages twice: with the
committed schema (up to two items for any message: before) and with `extraction.schema_for(message)` (one
item per sentence that states something: after). Messages: the soak's statements and the statements of the
kit's multi-session set (tests/data/multisession.json). Tokens generated are the machine-independent cost;
seconds depend on the machine and its load (recorded). For each run: tokens, seconds, path, items kept and
rejected by the grounding rule.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def messages(n: int) -> list[str]:
    """The first `n` statements (messages that go to the extractor) of the soak stream and the multi-session set."""
    from magistral_kit.memory.episodic import classify
    from soak import message

    data = json.loads((ROOT / "tests" / "data" / "multisession.json").read_text())
    pool = [m for c in data["conversations"] for s in c["sessions"] for m in s]
    soak = [message(i) for i in range(3 * n)]
    out: list[str] = []
    for a, b in zip(soak, pool + [""] * len(soak)):
        for m in (a, b):
            if m and classify(m).states_fact and m not in out:
                out.append(m)
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=16)
    parser.add_argument("--out", default="bench/results/extraction_cost.json")
    args = parser.parse_args(argv)
    from magistral_kit.config import KitConfig
    from magistral_kit.diagnostics import machine_info
    from magistral_kit.memory.extraction import extraction_messages, parse_output, schema, schema_for
    from magistral_kit.model.constrained import generate_json
    from magistral_kit.model.loading import load_model

    config = KitConfig()
    lm = load_model(config, progress=False)
    msgs = messages(args.messages)
    runs: dict[str, list[dict]] = {"committed schema (before)": [], "schema_for (after)": []}
    load_start = os.getloadavg()
    for m in msgs:
        for label, sch in (("committed schema (before)", schema()), ("schema_for (after)", schema_for(m))):
            out = generate_json(lm, extraction_messages(m), sch, config.extraction_max_new_tokens)
            ex = parse_output(out.text, m)
            runs[label].append({"message": m, "tokens_out": out.tokens_out, "seconds": round(out.seconds, 3),
                                "stopped": out.stopped, "path": ex.path, "kept": [i.text for i in ex.items],
                                "rejected": [i.text for i in ex.rejected]})
            print(f"{label}: {out.tokens_out} tokens, {out.seconds:.1f} s, {ex.path}", flush=True)
    summary = {label: {"extractions": len(rows),
                       "tokens_median": statistics.median(r["tokens_out"] for r in rows),
                       "tokens_total": sum(r["tokens_out"] for r in rows),
                       "seconds_median": statistics.median(r["seconds"] for r in rows),
                       "paths": {p: sum(r["path"] == p for r in rows) for p in ("json", "empty", "invalid")},
                       "kept": sum(len(r["kept"]) for r in rows), "rejected": sum(len(r["rejected"]) for r in rows)}
               for label, rows in runs.items()}
    result = {"model": config.model, "cap": config.extraction_max_new_tokens, "messages": len(msgs),
              "summary": summary, "runs": runs,
              "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": os.getloadavg()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps(summary, indent=1))
    return 0


def markdown_table(result: dict) -> str:
    """README's extraction-cost table (bench/report.py)."""
    lines = ["| extraction schema | extractions | tokens, median (total) | seconds, median | paths | items kept / "
             "rejected |", "|---|---:|---:|---:|---|---:|"]
    for label, s in result["summary"].items():
        paths = ", ".join(f"{k} {v}" for k, v in s["paths"].items() if v)
        lines.append(f"| {label} | {s['extractions']} | {s['tokens_median']:.0f} ({s['tokens_total']:,}) | "
                     f"{s['seconds_median']:.1f} | {paths} | {s['kept']} / {s['rejected']} |")
    m = result["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_start"])
    return "\n".join(lines) + (
        f"\n\nThe same {result['messages']} statements through the chat's extractor ({result['model']}, greedy, "
        f"xgrammar, cap {result['cap']} tokens); {m['cpu']}, {m['cores']} cores, load average {load} at the "
        f"start (seconds depend on it; tokens do not) (`bench/results/extraction_cost.json`).")


if __name__ == "__main__":
    raise SystemExit(main())
