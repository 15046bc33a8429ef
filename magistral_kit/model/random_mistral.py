"""Random-weight Mistral models in a folder that loads like Magistral: config, safetensors, tekken.json.

Magistral itself cannot be downloaded here, so its code path is exercised on models built by this module:
`tiny` (a few MB, for CI on the CPU) and `magistral` (the exact Magistral-Small-2506 shape, for GPU
benchmarks). The tokenizer is a tekken file that mistral-common ships; it is an older tokenizer version
(v3, no system-prompt token) than Magistral's, which is exactly why the formatting must follow the version
the tokenizer declares.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SHAPES: dict[str, dict] = {
    # multiples of 64 so bitsandbytes' 4-bit blocks tile every linear layer
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, max_position_embeddings=8192),
    # Magistral-Small-2506 (Mistral-Small-3.1 text decoder)
    "magistral": dict(hidden_size=5120, intermediate_size=32768, num_hidden_layers=40, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, max_position_embeddings=40960),
}


def tekken_file() -> Path:
    """The newest tekken tokenizer file shipped inside mistral-common."""
    import mistral_common

    files = sorted((Path(mistral_common.__file__).parent / "data").glob("tekken_*.json"))
    if not files:
        raise FileNotFoundError("mistral-common ships no tekken_*.json; reinstall mistral-common==1.13.1")
    return files[-1]


def build_random_mistral(folder: str | Path, shape: str = "tiny", seed: int = 0, device: str = "cpu",
                         dtype: str = "bfloat16", system_prompt: str | None = None) -> Path:
    """Write a random-weight Mistral of `shape` into `folder` (replaced if present) and return the folder."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = MistralConfig(vocab_size=131072, rope_theta=1_000_000_000.0, sliding_window=None,
                           rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                           torch_dtype=dtype, **SHAPES[shape])
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # init in the target dtype: the full shape is 47 GB in bf16
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if shape == "tiny":
        # a larger init spread keeps logits of a 2-layer model apart, so greedy comparisons are meaningful
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.08)
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    shutil.copy(tekken_file(), tmp / "tekken.json")
    if system_prompt is not None:
        (tmp / "SYSTEM_PROMPT.txt").write_text(system_prompt)
    (tmp / "RANDOM_WEIGHTS.json").write_text(json.dumps({"shape": shape, "seed": seed}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
