"""bench/extractor_outputs.py on the device machine: the same embedded extractor, batched on a GPU.

    python3 bench/gpu_extractor_outputs.py --parts /tmp/parts --files tmp/gpu/b --out $OUT/outputs.jsonl

The embedded model is SmolLM2-135M-Instruct's Q4_1 GGUF (what `load_model` converts on the CPU); it is
carried in two parts (the device accepts 64 MiB per call) and dequantized by transformers' GGUF loader in
float32, with the converted folder's tokenizer, chat template and end-of-sequence fix. Decoding is greedy and
constrained by xgrammar to the committed extraction schema, through `magistral_kit.model.constrained`. Only
the items are wanted for labelling, so each output stops at its "summary" key and is closed with an empty
summary. Why the GPU: on the shared 2-core CPU one batch of 16 outputs took 808 s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class DeviceLM:
    """The few `LoadedModel` members that `model.constrained` uses."""

    tokenizer_kind = "hf"

    def __init__(self, model, tokenizer, eos: list[int]) -> None:
        self.model, self.tokenizer, self.eos_token_ids = model, tokenizer, eos
        self.context_window = 8192

    def encode_chat(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.eos_token_ids], skip_special_tokens=True)


def _bare_packages() -> None:
    import types

    for name in ("magistral_kit", "magistral_kit.memory", "magistral_kit.model"):
        mod = types.ModuleType(name)
        mod.__path__ = [str(ROOT / name.replace(".", "/"))]
        sys.modules[name] = mod


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", required=True, help="folder with part_00, part_01 of the GGUF")
    parser.add_argument("--files", required=True, help="tokenizer files, messages.json, gguf.sha256")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    files = Path(args.files)
    gguf = Path(args.parts) / "model.gguf"
    gguf.write_bytes(b"".join((Path(args.parts) / p).read_bytes() for p in ("part_00", "part_01")))
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert digest == (files / "gguf.sha256").read_text().strip(), "GGUF parts do not match the original"
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    model.to("cuda").eval()
    tok = AutoTokenizer.from_pretrained(str(files))
    gen = GenerationConfig.from_pretrained(str(files))
    eos = sorted({tok.eos_token_id, *([gen.eos_token_id] if isinstance(gen.eos_token_id, int) else
                                      (gen.eos_token_id or []))} - {None})
    lm = DeviceLM(model, tok, eos)
    _bare_packages()  # the device image lacks the kit's pins (pydantic, MemOS): skip the package __init__s
    from magistral_kit.memory.extraction import extraction_messages, schema
    from magistral_kit.model.constrained import generate_json_batch

    msgs = json.loads((files / "messages.json").read_text())
    out = Path(args.out)
    started = time.perf_counter()
    with open(out, "w", encoding="utf-8") as f:
        for start in range(0, len(msgs), args.batch):
            chunk = msgs[start:start + args.batch]
            res = generate_json_batch(lm, [extraction_messages(m) for _, m in chunk], schema(), args.max_new_tokens,
                                      stop_at='"summary"')
            for (src, m), r in zip(chunk, res):
                text = r.text.rstrip().rstrip(",") + ', "summary": ""}' if r.stopped == "stop_at" else r.text
                f.write(json.dumps({"source": src, "message": m, "output": text, "tokens_out": r.tokens_out,
                                    "stopped": r.stopped, "where": "gpu float32 (bench/gpu_extractor_outputs.py)"},
                                   ensure_ascii=False) + "\n")
            print(f"{start + len(chunk)}/{len(msgs)} {time.perf_counter() - started:.1f} s", flush=True)
    print("torch", torch.__version__, "eos", eos, torch.cuda.get_device_name(0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
