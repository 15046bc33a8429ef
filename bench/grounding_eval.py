"""Precision / recall of the grounding rule (`memory.grounding.check`) on the hand-labelled extractor outputs.

    python bench/grounding_eval.py --out bench/results/grounding_eval.json

tests/data/grounding_labels.jsonl holds real outputs of the embedded extractor, one item per line, labelled
by hand (guideline: tests/data/GROUNDING_LABELS.md). Each line carries its split: the rule was written
looking at "train" only; "heldout" is the honest figure. Positive class = grounded (the rule keeps it):
precision = kept items that are truly grounded / kept items; recall = truly grounded items kept / truly
grounded items. The rejection side is reported too (how much fabrication is caught).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABELS = ROOT / "tests" / "data" / "grounding_labels.jsonl"


def load(path: Path = LABELS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scores(rows: list[dict]) -> dict:
    from magistral_kit.memory.grounding import check

    tp = fp = fn = tn = 0
    errors = []
    for r in rows:
        kept = check(r["item"], r["message"]).grounded
        if kept and r["grounded"]:
            tp += 1
        elif kept:
            fp += 1
            errors.append({"kind": "kept but not grounded", "item": r["item"], "message": r["message"][:160]})
        elif r["grounded"]:
            fn += 1
            errors.append({"kind": "rejected but grounded", "item": r["item"], "message": r["message"][:160]})
        else:
            tn += 1
    n = tp + fp + fn + tn
    return {"items": n, "grounded": tp + fn, "not_grounded": fp + tn,
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "ungrounded_caught": tn / (tn + fp) if tn + fp else None, "accuracy": (tp + tn) / n if n else None,
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default=str(LABELS))
    parser.add_argument("--out", default="bench/results/grounding_eval.json")
    args = parser.parse_args(argv)
    from magistral_kit.diagnostics import machine_info

    rows = load(Path(args.labels))
    out = {"labels": Path(args.labels).name, "sources": sorted({r["source"].split(":")[0] for r in rows}),
           **{split: scores([r for r in rows if r["split"] == split]) for split in ("train", "heldout")},
           "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(json.dumps({s: {k: v for k, v in out[s].items() if k != "errors"} for s in ("train", "heldout")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
