"""Which constrained-decoding library for the extractor: time each adds per token, and install weight.

    python bench/constrained_decoding.py --out bench/results/constrained_decoding.json

For each backend (xgrammar, lm-format-enforcer) and each tokenizer (the embedded SmolLM2's HF tokenizer;
mistral-common's tekken file through the kit's adapter) this times, teacher-forced over a fixed valid
extraction output: building the tokenizer table (once per tokenizer), compiling the schema, and computing
the allowed-token mask per token. The model's own decode step (no constraint) is timed on the embedded
model for scale. Install weight = the installed size of each library and the packages it alone pulls.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = json.dumps({"memory list": [{"key": "sister job", "memory_type": "UserMemory",
                                      "value": "The user's sister Ana works as a marine biologist in Lisbon.",
                                      "tags": ["family", "work"]}], "summary": "Ana is a marine biologist."})
OWN_DEPS = {"xgrammar": ["xgrammar", "apache-tvm-ffi"], "lm-format-enforcer": ["lm-format-enforcer", "interegular"]}


def installed_bytes(dist: str) -> int:
    d = metadata.distribution(dist)
    return sum((Path(d.locate_file(f))).stat().st_size for f in (d.files or []) if Path(d.locate_file(f)).exists())


def time_masks(backend: str, lm, ids: list[int], schema: dict) -> dict:
    from magistral_kit.model import constrained as c

    c._TABLES.pop(lm.tokenizer, None)
    t = time.perf_counter()
    if backend == "xgrammar":
        import torch
        import xgrammar as xgr

        c._tables(lm)["xgr_compiler"] = xgr.GrammarCompiler(c.xgrammar_tokenizer_info(lm, c._vocab_size(lm)))
        table_s = time.perf_counter() - t
        t = time.perf_counter()
        compiled = c._xgrammar_compiled(lm, schema)
        compile_s = time.perf_counter() - t
        proc = c._XgrammarBatch(compiled, 1)
        scores = torch.zeros(1, c._vocab_size(lm))
        per = []
        for n in range(len(ids)):
            t = time.perf_counter()
            proc(torch.tensor([ids[:n] or [0]]), scores.clone())
            per.append(time.perf_counter() - t)
    else:
        from lmformatenforcer import CharacterLevelParserConfig, JsonSchemaParser, TokenEnforcer

        data = lmfe_tokenizer_data(lm)
        table_s = time.perf_counter() - t
        t = time.perf_counter()
        enforcer = TokenEnforcer(data, JsonSchemaParser(schema, CharacterLevelParserConfig(
            max_consecutive_whitespaces=1)))
        compile_s = time.perf_counter() - t
        per = []
        for n in range(len(ids)):
            t = time.perf_counter()
            enforcer.get_allowed_tokens(ids[:n])
            per.append(time.perf_counter() - t)
    return {"table_seconds": table_s, "compile_seconds": compile_s, "tokens": len(ids),
            "mask_ms_per_token_median": statistics.median(per) * 1000, "mask_ms_per_token_mean":
            statistics.mean(per) * 1000, "mask_ms_per_token_max": max(per) * 1000}


# lm-format-enforcer's tables (the kit dropped this backend; the comparison keeps it)
def tekken_tokenizer_data(inner: Any, eos_ids: list[int]) -> Any:
    """lm-format-enforcer's tokenizer table for a mistral-common `Tekkenizer` (the adapter it lacks)."""
    from lmformatenforcer import TokenEnforcerTokenizerData
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

    n_special = inner.num_special_tokens
    regular = []
    for idx in range(n_special, inner.n_words):
        piece = inner.id_to_byte_piece(idx, SpecialTokenPolicy.IGNORE)
        text = piece.decode("utf-8", errors="replace")
        regular.append((idx, text, text.startswith(" ")))

    def decode(ids: list[int]) -> str:
        return inner.decode([i for i in ids if i >= n_special], special_token_policy=SpecialTokenPolicy.IGNORE
                            ).rstrip("\ufffd")

    return TokenEnforcerTokenizerData(regular, decode, list(eos_ids), False, inner.n_words)


def hf_tokenizer_data(tokenizer: Any, eos_ids: list[int], vocab_size: int) -> Any:
    """lm-format-enforcer's own builder for a transformers tokenizer, with every end-of-sequence id."""
    from lmformatenforcer import TokenEnforcerTokenizerData
    from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

    data = build_token_enforcer_tokenizer_data(tokenizer, vocab_size=vocab_size)
    return TokenEnforcerTokenizerData(data.regular_tokens, data.decoder, list(eos_ids), False, vocab_size)


def lmfe_tokenizer_data(lm: Any) -> Any:
    """The (cached) lm-format-enforcer table for a `LoadedModel`'s tokenizer."""
    from magistral_kit.model import constrained as c

    tables = c._tables(lm)
    if "lmfe" not in tables:
        if lm.tokenizer_kind == "tekken":
            tables["lmfe"] = tekken_tokenizer_data(lm.tokenizer.instruct_tokenizer.tokenizer, lm.eos_token_ids)
        else:
            tables["lmfe"] = hf_tokenizer_data(lm.tokenizer, lm.eos_token_ids,
                                               min(c._vocab_size(lm), len(lm.tokenizer)))
    return tables["lmfe"]


def model_step_ms(lm, steps: int) -> float:
    import torch

    ids = lm.encode_chat([{"role": "user", "content": "Tell me about Lisbon."}])
    x = torch.tensor([ids])
    with torch.inference_mode():
        t = time.perf_counter()
        lm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=steps,
                          min_new_tokens=steps, do_sample=False)
    return (time.perf_counter() - t) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/constrained_decoding.json")
    parser.add_argument("--model-steps", type=int, default=8)
    args = parser.parse_args(argv)
    from magistral_kit.config import KitConfig
    from magistral_kit.diagnostics import machine_info
    from magistral_kit.memory.extraction import schema
    from magistral_kit.model.loading import load_model
    from magistral_kit.model.random_mistral import build_random_mistral

    import tempfile

    results: dict = {b: {"install_bytes": {d: installed_bytes(d) for d in OWN_DEPS[b]},
                         "versions": {d: metadata.version(d) for d in OWN_DEPS[b]}} for b in OWN_DEPS}
    hf = load_model(KitConfig(), progress=False)  # one model at a time: the loader keeps one in memory
    hf_ids = hf.tokenizer.encode(TARGET, add_special_tokens=False)
    for backend in OWN_DEPS:
        results[backend]["hf (SmolLM2)"] = time_masks(backend, hf, hf_ids, schema())
    step_ms = model_step_ms(hf, args.model_steps)
    tek_dir = build_random_mistral(Path(tempfile.mkdtemp()) / "tiny", shape="tiny")
    tek = load_model(KitConfig(model=str(tek_dir), quantization="none", device="cpu"), progress=False)
    inner = tek.tokenizer.instruct_tokenizer.tokenizer
    tek_ids = inner.encode(TARGET, bos=False, eos=False)
    for backend in OWN_DEPS:
        results[backend][f"tekken {inner.version.value} (mistral-common)"] = time_masks(backend, tek, tek_ids,
                                                                                       schema())
    out = {"backends": results, "model_step_ms_embedded": step_ms,
           "picked": "xgrammar", "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
