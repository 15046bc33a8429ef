"""LoCoMo recall@k through the product's memory layer, written to JSON.

    python bench/locomo_recall.py --mode raw --out bench/results/locomo_raw.json            # all 10, CPU
    python bench/locomo_recall.py --mode extract --conversations 30 --out bench/results/locomo_extract.json
    python bench/locomo_recall.py --ablation --out bench/results/locomo_ablation.json      # picks the defaults

raw: every dialogue turn one memory, with the retrieval settings of `KitConfig()` (the chat's defaults),
plus the baseline (plain cosine over ``Speaker: text``) measured the same way unless ``--no-baseline``.
extract: MemOS extraction per session with the embedded model (`load_model(KitConfig())`); raw recall on the
same conversations is recorded next to it. ``--set lexical_weight=0`` changes one retrieval setting;
``--ablate`` adds one run per improvement switched on in turn (slow: one ingestion each).
``--ablation`` runs only the ablation that chose the retrieval defaults (`ablation_plan`: the cumulative steps
to the defaults) over all conversations, with the tuning / held-out halves; ``--ablation-steps 6,7`` runs the
alternatives that were not kept (RRF fusion, query rewriting). ``--ablation-steps`` splits the work over
processes; ``--merge PART…`` joins the parts.

The data: ``--locomo PATH``, else ``$MAGISTRAL_LOCOMO``, else ``../shared/locomo`` when present
(`magistral_kit.evaluation.locomo.find_locomo`).

`markdown_table` (README's ``locomo`` table) and `ablation_table` (``locomo_ablation``) render the results
for ``bench/report.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from magistral_kit.config import REPO_ROOT, KitConfig  # noqa: E402
from magistral_kit.diagnostics import machine_info  # noqa: E402
from magistral_kit.evaluation.locomo import (HELD_OUT, REFERENCE_BASELINE, TUNING_SET, evidence_report,  # noqa: E402
                                  load_locomo, summarise)
from magistral_kit.memory.retrieval import RetrievalOptions  # noqa: E402
from magistral_kit.evaluation import locomo_eval as le  # noqa: E402


def split(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall and per-category recall, plus the tuning and held-out halves."""
    out = summarise(rows)
    for name, ids in (("tuning_set", TUNING_SET), ("held_out", HELD_OUT)):
        sub = [r for r in rows if r["conversation"] in ids]
        if sub:
            s = summarise(sub)
            out[name] = {"conversations": list(ids), **s["overall"], "per_category": s["per_category"]}
    return out


def parse_set(values: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in values:
        key, _, raw = v.partition("=")
        out[key] = json.loads(raw) if raw not in ("linear", "rrf") else raw
    return out


def ablation_steps(best: RetrievalOptions) -> list[tuple[str, RetrievalOptions]]:
    """Cumulative: baseline, then each improvement of the best setting switched on in turn."""
    steps = [("baseline (speaker)", le.baseline_options())]
    o = steps[0][1]
    if best.lexical_weight:
        o = o.replace(lexical_weight=best.lexical_weight, fusion=best.fusion, candidates=best.candidates)
        steps.append(("+ bm25", o))
    if best.date_in_text:
        o = o.replace(date_in_text=True)
        steps.append(("+ date", o))
    if best.context_turns:
        o = o.replace(context_turns=best.context_turns)
        steps.append((f"+ context {best.context_turns}", o))
    if best.query_rewrite:
        o = o.replace(query_rewrite=True)
        steps.append(("+ rewrite", o))
    return steps


def ablation_plan(alternatives: bool = False) -> list[tuple[str, RetrievalOptions, bool]]:
    """(label, options, kept): cumulative steps to the default; with `alternatives`, then the options that were
    not kept (RRF fusion, query rewriting), measured against the default (``--ablation-steps 6,7``)."""
    plain = RetrievalOptions.plain()
    speaker = le.baseline_options()
    bm25 = speaker.replace(lexical_weight=0.5, fusion="linear", candidates=50)
    date = bm25.replace(date_in_text=True)
    context = date.replace(context_turns=2)
    default = RetrievalOptions.from_config(KitConfig())
    return [
        ("plain cosine over the turn text", plain, True),
        ("`Speaker: text` (reference baseline)", speaker, True),
        ("+ BM25 hybrid (linear, weight 0.5)", bm25, True),
        ("+ session date in the text", date, True),
        ("+ 2 preceding turns as context", context, True),
        (f"BM25 weight 0.5 → {default.lexical_weight} (the default)", default, True),
    ] + ([("default with RRF fusion instead of linear", default.replace(fusion="rrf"), False),
          ("default with query rewriting", default.replace(query_rewrite=True), False)] if alternatives else [])


def run_ablation(convs: list, only: list[int] | None = None) -> list[dict[str, Any]]:
    steps = []
    for i, (label, o, kept) in enumerate(ablation_plan(alternatives=True)):
        if (only is not None and i not in only) or (only is None and not kept):
            continue
        r = le.run(convs, "raw", o, progress=False)
        s = split(r.rows)
        steps.append({"index": i, "step": label, "kept": kept, "options": asdict(o), "overall": s["overall"],
                      "tuning_set": s.get("tuning_set"), "held_out": s.get("held_out"), "run_seconds": r.seconds})
        print(f"ablation {label}: {s['overall']} in {r.seconds:.0f} s", flush=True)
    return steps


def _r(block: dict | None) -> str:
    if not block:
        return "–"
    return " / ".join(f"{block[f'recall@{k}']:.3f}" for k in (1, 5, 10))


def markdown_table(result: dict) -> str:
    """README's LoCoMo table: recall@1/5/10 of the default against the measured baseline."""
    base = result["baseline"]
    n = result["overall"]["questions"]
    rows = [
        "| retrieval | all conversations | tuning half | held-out half |",
        "|---|---|---|---|",
        f"| default (`{result['options_label']}`) | {_r(result['overall'])} | {_r(result.get('tuning_set'))} | "
        f"{_r(result.get('held_out'))} |",
        f"| baseline (`{base.get('options_label', 'speaker')}`) | {_r(base.get('overall'))} | "
        f"{_r(base.get('tuning_set'))} | {_r(base.get('held_out'))} |",
    ]
    cpu = result["machine"]
    return "\n".join(rows) + (
        f"\n\nrecall@1 / @5 / @10 over {n:,} questions of {len(result['conversations'])} conversations, "
        f"{result['seconds_total']:.0f} s on {cpu.get('cores')} CPU cores (`bench/results/locomo_raw.json`).")


def ablation_table(result: dict) -> str:
    """The ablation that chose the retrieval defaults (``--ablation``)."""
    rows = ["| step | tuning half | held-out half | all conversations |", "|---|---|---|---|"]
    for s in result["steps"]:
        label = s["step"] if s["kept"] else f"*not kept:* {s['step']}"
        if s.get("overall") is None:
            rows.append(f"| {label} | not measured in this run (`--ablation-steps {s['index']}`) | | |")
            continue
        if "locomo_raw" in str(s.get("source")):
            label += " ¹"
        rows.append(f"| {label} | {_r(s['tuning_set'])} | {_r(s['held_out'])} | {_r(s['overall'])} |")
    from_raw = any("locomo_raw" in str(s.get("source")) for s in result["steps"])
    n = next(s["overall"]["questions"] for s in result["steps"] if s.get("overall"))
    return "\n".join(rows) + (f"\n\nrecall@1 / @5 / @10, raw turns, all-MiniLM-L6-v2, {n:,} questions; settings "
                              f"chosen on the tuning half {', '.join(result['tuning_set'])} "
                              "(`bench/results/locomo_ablation.json`)."
                              + ("\n¹ the same setting's run in `bench/results/locomo_raw.json` (default or baseline)."
                                 if from_raw else ""))


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["raw", "extract"], default="raw")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/locomo_<mode>.json)")
    ap.add_argument("--locomo", default=None,
                    help="folder or locomo10.json (default: $MAGISTRAL_LOCOMO, else ../shared/locomo)")
    ap.add_argument("--conversations", default=None,
                    help="comma-separated ids (default: all for raw, '30' for extract)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a retrieval option, e.g. lexical_weight=0")
    ap.add_argument("--no-baseline", action="store_true", help="skip the measured baseline (reference only)")
    ap.add_argument("--ablate", action="store_true", help="one run per improvement, cumulative")
    ap.add_argument("--ablation", action="store_true",
                    help="only the ablation that chose the defaults (bench/results/locomo_ablation.json)")
    ap.add_argument("--ablation-steps", default=None, metavar="I,J",
                    help="run only these steps of the ablation (to split it over processes; see --merge)")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="PART",
                    help="merge ablation parts (written with --ablation-steps) into --out")
    ap.add_argument("--raw", type=Path, default=None,
                    help="with --merge: a --mode raw result whose default / baseline runs fill those steps")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="extractor cap (default: KitConfig's)")
    args = ap.parse_args(argv)

    if args.merge:
        return merge_ablation(args.merge, args.out or REPO_ROOT / "bench" / "results" / "locomo_ablation.json",
                              args.raw)
    config = KitConfig()
    options = RetrievalOptions.from_config(config).replace(**parse_set(args.set))
    wanted = args.conversations.split(",") if args.conversations else (None if args.mode == "raw" else ["30"])
    convs = load_locomo(args.locomo, wanted)
    out_path = args.out or REPO_ROOT / "bench" / "results" / f"locomo_{args.mode}.json"
    started = time.perf_counter()
    if args.ablation:
        out_path = args.out or REPO_ROOT / "bench" / "results" / "locomo_ablation.json"
        result = {"conversations": [c.sample_id for c in convs], "tuning_set": list(TUNING_SET),
                  "held_out": list(HELD_OUT)}
        only = [int(i) for i in args.ablation_steps.split(",")] if args.ablation_steps else None
        result["steps"] = run_ablation(convs, only)
        return _write(result, out_path, started)
    result: dict[str, Any] = {"mode": args.mode, "conversations": [c.sample_id for c in convs],
                              "options": asdict(options), "options_label": options.describe(),
                              "evidence_fixes": evidence_report(convs)}
    llm = None
    if args.mode == "extract":
        from magistral_kit.model.loading import load_model

        t = time.perf_counter()
        lm = load_model(config)
        result["model"] = {"name": config.model, "load_seconds": round(time.perf_counter() - t, 1)}
        llm = le.model_llm(lm, config)
    max_new = args.max_new_tokens or config.extraction_max_new_tokens
    run = le.run(convs, args.mode, options, llm=llm, max_new_tokens=max_new)
    result.update(split(run.rows))
    result["ingestion"] = run.ingestion
    result["run_seconds"] = run.seconds
    print(f"{args.mode} {options.describe()}: {result['overall']} in {run.seconds:.0f} s", flush=True)
    if args.mode == "extract":
        raw = le.run(convs, "raw", options, progress=True)
        result["raw_same_conversations"] = split(raw.rows)
        print(f"raw on the same conversations: {result['raw_same_conversations']['overall']}", flush=True)
    if not args.no_baseline:
        base = le.run(convs, "raw", le.baseline_options())
        result["baseline"] = {"options_label": le.baseline_options().describe(), **split(base.rows),
                              "run_seconds": base.seconds, "reference": REFERENCE_BASELINE}
        print(f"baseline: {result['baseline']['overall']} in {base.seconds:.0f} s", flush=True)
    else:
        result["baseline"] = {"reference": REFERENCE_BASELINE}
    if args.ablate:
        result["ablation"] = []
        for label, o in ablation_steps(options):
            r = le.run(convs, "raw", o, progress=False)
            s = split(r.rows)
            result["ablation"].append({"step": label, "options": asdict(o), "overall": s["overall"],
                                       "tuning_set": s.get("tuning_set"), "held_out": s.get("held_out"),
                                       "run_seconds": r.seconds})
            print(f"ablation {label}: {s['overall']}", flush=True)
    for r in result.get("per_conversation", {}).values():
        r.pop("per_category", None)
    return _write(result, out_path, started)


def merge_ablation(parts: list[Path], out_path: Path, raw: Path | None = None) -> int:
    """One ablation result from parts run in separate processes (each keeps its own machine record).

    `raw`: a ``--mode raw`` result (``locomo_raw.json``); a step whose options are its default or its baseline
    is taken from it (same measurement, recorded with its source). Steps still missing are listed as such.
    """
    loaded = [json.loads(p.read_text()) for p in parts]
    steps = {s["index"]: {**s, "source": p.name} for p, part in zip(parts, loaded) for s in part["steps"]}
    plan = ablation_plan()
    if raw is not None:
        r = json.loads(raw.read_text())
        for i, (label, o, kept) in enumerate(plan):
            for block, opts in ((r, r["options"]), (r["baseline"], asdict(le.baseline_options()))):
                if i not in steps and asdict(o) == opts:
                    steps[i] = {"index": i, "step": label, "kept": kept, "options": asdict(o),
                                "overall": block["overall"], "tuning_set": block.get("tuning_set"),
                                "held_out": block.get("held_out"), "run_seconds": block.get("run_seconds"),
                                "source": f"{raw.name} ({'default' if block is r else 'baseline'} run)"}
    missing = [i for i in range(len(plan)) if i not in steps]
    for i in missing:
        steps[i] = {"index": i, "step": plan[i][0], "kept": plan[i][2], "options": asdict(plan[i][1]),
                    "overall": None, "tuning_set": None, "held_out": None, "source": None}
    first = loaded[0]
    result = {k: first[k] for k in ("conversations", "tuning_set", "held_out")}
    result.update(steps=[steps[i] for i in sorted(steps)], missing_steps=missing,
                  seconds_total=max(p["seconds_total"] for p in loaded), versions=first["versions"],
                  machine=first["machine"],
                  parts=[{"file": p.name, "steps": [s["index"] for s in part["steps"]],
                          "seconds_total": part["seconds_total"], "machine": part["machine"]}
                         for p, part in zip(parts, loaded)],
                  note="parts run as parallel processes on the same machine (--ablation-steps), merged with --merge")
    out_path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out_path}" + (f"; steps {missing} not measured" if missing else ""))
    return 0


def _write(result: dict[str, Any], out_path: Path, started: float) -> int:
    result["seconds_total"] = round(time.perf_counter() - started, 1)
    info = machine_info()
    result["versions"] = {**info.pop("versions", {}), "magistral_kit_commit": git_commit()}
    result["machine"] = {**info, "load_average_at_end": os.getloadavg()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out_path} ({result['seconds_total']} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
