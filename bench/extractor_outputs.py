"""Collect real outputs of the embedded extractor (constrained to the committed schema), for labelling.

    python bench/extractor_outputs.py --out tests/data/extractor_outputs.jsonl

Messages come from three places: the soak's message stream, LoCoMo conversations (speaker turns, when the
data is present), and the kit's own multi-session set (tests/data/multisession.json) plus a few extra
conversational messages. Each output line: {source, message, output, tokens_out, stopped}. The grounding
labels (tests/data/grounding_labels.jsonl) are written by hand from these outputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

EXTRA = [
    "My brother Karim just started a bakery called Flour Power in Marseille.",
    "I have been learning the cello for six months and practise every evening.",
    "My partner and I adopted a greyhound named Comet last week.",
    "I'm allergic to peanuts and shellfish, so I always check menus.",
    "Our wedding anniversary is on 17 August.",
    "I quit coffee in January and switched to green tea.",
    "My manager asked me to lead the Berlin office opening in October.",
    "I grew up in a small village near Cork and moved to Dublin at 18.",
    "My favourite band is Radiohead and I saw them live in 2017.",
    "I'm training for the Valencia marathon in December; my goal is under 4 hours.",
    "My son Theo lost his first tooth yesterday.",
    "I drive a 2012 Honda Civic that keeps breaking down.",
    "My mother is recovering from knee surgery at home in Gdansk.",
    "I volunteer at the animal shelter on Tuesdays.",
    "The book club is reading Middlemarch this month and I'm hosting.",
]


def messages(locomo: Path | None, per_conversation: int) -> list[tuple[str, str]]:
    from soak import message

    out = [("soak", message(i)) for i in range(30) if i % 3 != 2]
    data = json.loads((ROOT / "tests/data/multisession.json").read_text())
    from magistral_kit.memory.episodic import classify

    for conv in data["conversations"]:
        for session in conv["sessions"]:
            out += [(f"own:{conv['id']}", m) for m in session if classify(m).states_fact]
    out += [("own:extra", m) for m in EXTRA]
    if locomo and locomo.exists():
        for f in sorted(locomo.glob("*.json"))[:3]:
            conv = json.loads(f.read_text())
            taken = 0
            for n in range(1, 40):
                for turn in conv.get(f"session_{n}", []):
                    text = turn.get("text", "")
                    if taken < per_conversation and len(text.split()) >= 6:
                        out.append((f"locomo:{f.stem}:{turn.get('dia_id')}", text))
                        taken += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tests/data/extractor_outputs.jsonl")
    parser.add_argument("--locomo", default=str(ROOT.parent.parent / "shared" / "locomo"))
    parser.add_argument("--per-conversation", type=int, default=35)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--skip", type=int, default=0, help="messages already collected (resume)")
    parser.add_argument("--items-only", action="store_true",
                        help="stop each output at its \"summary\" key (only the items are labelled); the "
                             "output is then closed with an empty summary")
    args = parser.parse_args(argv)
    from magistral_kit.config import KitConfig
    from magistral_kit.memory.extraction import extraction_messages, schema
    from magistral_kit.model.constrained import generate_json_batch
    from magistral_kit.model.loading import load_model

    locomo = Path(args.locomo) if args.locomo else None
    if locomo and not locomo.exists():
        locomo = Path("/work/shared/locomo")
    msgs = messages(locomo, args.per_conversation)[args.skip:]
    lm = load_model(KitConfig(), progress=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a" if args.skip else "w", encoding="utf-8") as f:
        for start in range(0, len(msgs), args.batch):
            chunk = msgs[start:start + args.batch]
            t = time.perf_counter()
            res = generate_json_batch(lm, [extraction_messages(m) for _, m in chunk], schema(), args.max_new_tokens,
                                      stop_at='"summary"' if args.items_only else None)
            for (src, m), r in zip(chunk, res):
                text = r.text
                if r.stopped == "stop_at":  # the items are complete; close the object MemOS's way
                    text = text.rstrip().rstrip(",") + ', "summary": ""}'
                f.write(json.dumps({"source": src, "message": m, "output": text, "tokens_out": r.tokens_out,
                                    "stopped": r.stopped}, ensure_ascii=False) + "\n")
            f.flush()
            print(f"{start + len(chunk)}/{len(msgs)} in {time.perf_counter() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
