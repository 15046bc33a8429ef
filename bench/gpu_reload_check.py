"""Check on a GPU that `load_model` itself saves and then reloads the pre-quantized NF4 checkpoint, and that a
chat reply there goes through the fast decode path. Two fresh processes on one random-weight model folder:

    python bench/gpu_reload_check.py --out bench/results/gpu_reload_check.json [--shape tiny]

The first process quantizes from bf16 and saves the checkpoint; the second must report 'prequantized'.
Timings of the tiny shape say nothing about Magistral (bench/gpu_chat.py measures that); this checks wiring.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from magistral_kit.config import KitConfig
from magistral_kit.model.loading import load_model
from magistral_kit.model.generation import generate_reply
cfg = KitConfig(model=sys.argv[1], quantization="nf4", device="cuda", temperature=0.0, max_new_tokens=64)
t = time.perf_counter(); lm = load_model(cfg, progress=False); load = time.perf_counter() - t
pieces = []
replies = [generate_reply(lm, [{"role": "user", "content": "Hello there"}], cfg, on_text=pieces.append) for _ in range(2)]
print(json.dumps({"load_seconds": load, "model_notes": lm.notes, "reply_paths": [r.path for r in replies],
                  "reply_notes": [r.notes for r in replies], "tokens_out": [r.tokens_out for r in replies],
                  "streamed_equals_reply": "".join(pieces) == replies[0].raw + replies[1].raw}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--out", default="bench/results/gpu_reload_check.json")
    args = parser.parse_args()
    from magistral_kit.diagnostics import machine_info
    from magistral_kit.model.random_mistral import build_random_mistral

    folder = build_random_mistral(Path(tempfile.mkdtemp()) / f"random-{args.shape}", shape=args.shape, device="cuda")
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"shape": args.shape, "first_process": runs[0], "second_process": runs[1], "machine": machine_info(),
              "reload_used_checkpoint": any("prequantized" in n for n in runs[1]["model_notes"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["reload_used_checkpoint"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
