"""Does the answer use the memory? Recall questions after multi-session conversations.

    python bench/answer_use.py --placement system --placement user --out bench/results/answer_use.json

For each conversation of tests/data/multisession.json, every session is fed into a fresh cube by its own
`Chat` (`Chat.remember`: verbatim episodic memories, superseding, no reply generated; extraction off unless
--extract), the chat is closed, and a NEW chat over the reopened cube asks each recall question. An answer
counts when one of the question's gold answers (lower-cased, accents and punctuation folded) is a substring
of the answer; `retrieved@k` counts questions whose gold answer was in the memories given to the model
(the ceiling for the answer). One result per prompt placement (`KitConfig.memory_placement`): 'system'
(the original prompt: a list in the system prompt) and 'user' (quoted before the question).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def contains_gold(text: str, gold: list[str]) -> bool:
    return any(norm(g) in norm(text) for g in gold)


def run(placement: str, model: str, max_new_tokens: int, extract: bool, data: dict) -> dict:
    from magistral_kit.chat.session import open_chat
    from magistral_kit.config import KitConfig

    rows = []
    for conv in data["conversations"]:
        cube = tempfile.mkdtemp(prefix=f"answer-use-{conv['id']}-")
        config = KitConfig(model=model, cube_dir=cube, temperature=0.0, max_new_tokens=max_new_tokens,
                           extract=extract, memory_placement=placement)
        for session in conv["sessions"]:
            with open_chat(config, progress=False) as chat:
                for message in session:
                    chat.remember(message)
        with open_chat(config, progress=False) as chat:
            for q in conv["questions"]:
                turn = chat.send(q["q"])
                given = " ".join(h.text for h in turn.plan.memories) if turn.plan else ""
                rows.append({"conversation": conv["id"], "question": q["q"], "gold": q["gold"],
                             "answer": turn.answer, "used": contains_gold(turn.answer, q["gold"]),
                             "retrieved": contains_gold(given, q["gold"]),
                             "outdated_in_answer": contains_gold(turn.answer, q.get("outdated", [])) if
                             q.get("outdated") else None,
                             "seconds": turn.timings.total})
                chat.history.clear()  # each question on its own: the answer must come from memory
    n = len(rows)
    return {"placement": placement, "questions": n,
            "answer_uses_memory": sum(r["used"] for r in rows) / n if n else None,
            "gold_in_prompt": sum(r["retrieved"] for r in rows) / n if n else None,
            "answer_uses_memory_when_given": (sum(r["used"] for r in rows if r["retrieved"])
                                              / max(1, sum(r["retrieved"] for r in rows))),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--placement", action="append", choices=["system", "user"])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--extract", action="store_true")
    parser.add_argument("--conversations", default="", help="comma-separated ids (default: all)")
    parser.add_argument("--data", default=str(ROOT / "tests/data/multisession.json"))
    parser.add_argument("--out", default="bench/results/answer_use.json")
    args = parser.parse_args(argv)
    from magistral_kit.diagnostics import machine_info

    data = json.loads(Path(args.data).read_text())
    if args.conversations:
        keep = set(args.conversations.split(","))
        data["conversations"] = [c for c in data["conversations"] if c["id"] in keep]
    start = time.perf_counter()
    results = [run(p, args.model, args.max_new_tokens, args.extract, data) for p in (args.placement or
                                                                                    ["system", "user"])]
    out = {"model": args.model, "max_new_tokens": args.max_new_tokens, "extract": args.extract,
           "data": Path(args.data).name, "conversations": [c["id"] for c in data["conversations"]],
           "results": results, "seconds": time.perf_counter() - start,
           "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in results], indent=1))
    return 0


def markdown_table(result: dict) -> str:
    """README's answer-use table (bench/report.py): one row per prompt placement, per conversation topic."""
    convs = result["conversations"]
    head = ("| memories in the prompt | questions | answer contains the fact | gold fact in the prompt | "
            "answer uses it when given | " + " | ".join(convs) + " |\n|---|---:|---:|---:|---:|"
            + "---:|" * len(convs))
    names = {"system": "system prompt, a list (before)", "user": "quoted before the message (after)"}
    lines = [head]
    for r in result["results"]:
        per = []
        for c in convs:
            rows = [x for x in r["rows"] if x["conversation"] == c]
            per.append(f"{sum(x['used'] for x in rows)}/{len(rows)}")
        used = sum(x["used"] for x in r["rows"])
        given = sum(x["retrieved"] for x in r["rows"])
        used_given = sum(x["used"] for x in r["rows"] if x["retrieved"])
        lines.append(f"| {names.get(r['placement'], r['placement'])} | {r['questions']} | {used} "
                     f"({used / max(1, r['questions']):.0%}) | {given} | {used_given} of {given} | "
                     + " | ".join(per) + " |")
    m = result["machine"]
    return "\n".join(lines) + (
        f"\n\nModel {result['model']}, greedy, replies up to {result['max_new_tokens']} tokens, extraction "
        f"{'on' if result['extract'] else 'off'}; questions from `{result['data']}` asked by a new chat after "
        f"every session was stored and the cube reopened; {m['cpu']}, {m['cores']} cores "
        f"(`bench/results/answer_use.json`).")


if __name__ == "__main__":
    raise SystemExit(main())
