"""Random-weight Mistral models in a folder that loads like Magistral: config, safetensors, tekken.json.

Magistral itself cannot be downloaded here, so its code path is exercised on models built by this module:
`tiny` (a few MB, for CI on the CPU) and `magistral` (the exact Magistral-Small-2506 shape, for GPU
benchmarks). The tokenizer is either the tekken file mistral-common ships (``tokenizer="shipped"``: an older
version, v3, with no system-prompt token) or a tekken file *generated* here for a chosen version
(``"v7"``: Magistral-Small-2506's, with ``[SYSTEM_PROMPT]``; ``"v11"`` / ``"v13"``: later Magistral
releases, with ``[THINK]`` / ``[/THINK]``). A generated file has the 256 single bytes as its vocabulary plus
the special tokens of its version, so the model's vocabulary is small and the formatting is mistral-common's
own for that version.
"""
from __future__ import annotations

import base64
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
# Tokenizer versions a generated tekken file can have: 2506 ships v7; later Magistral releases v11 / v13.
TEKKEN_VERSIONS = ("v7", "v11", "v13")
GENERATED_SPECIAL_TOKENS = 64  # Magistral's files reserve 1,000; a small count keeps the tiny model small
_THINK = ("[THINK]", "[/THINK]")


def tekken_file() -> Path:
    """The newest tekken tokenizer file shipped inside mistral-common."""
    import mistral_common

    files = sorted((Path(mistral_common.__file__).parent / "data").glob("tekken_*.json"))
    if not files:
        raise FileNotFoundError("mistral-common ships no tekken_*.json; reinstall mistral-common==1.13.1")
    return files[-1]


def write_tekken(path: str | Path, version: str) -> Path:
    """Write a tekken.json of `version` (v7, v11, v13): byte vocabulary + that version's special tokens.

    The special tokens follow mistral-common's own order (the ranks every tekken file gives the first 20),
    then the rest of its `SpecialTokens`; ``[THINK]`` / ``[/THINK]`` exist from v11 on, as in Magistral's
    files. The split pattern is the one of the tekken file mistral-common ships.
    """
    from mistral_common.tokens.tokenizers.base import SpecialTokens
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    if version not in TEKKEN_VERSIONS:
        raise ValueError(f"tokenizer version {version!r} is not one Magistral ships; choose one of {TEKKEN_VERSIONS}")
    names = [t["token_str"] for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    names += [str(s) for s in SpecialTokens if str(s) not in names]
    if version == "v7":
        names = [n for n in names if n not in _THINK]
    names = [n for n in names if "MODEL_SETTINGS" not in n][:GENERATED_SPECIAL_TOKENS]
    special = [{"rank": i, "token_str": n, "is_control": True} for i, n in enumerate(names)]
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": chr(i)}
             for i in range(256)]
    pattern = json.loads(tekken_file().read_text())["config"]["pattern"]
    data = {"config": {"pattern": pattern, "num_vocab_tokens": len(vocab),
                       "default_vocab_size": len(vocab) + GENERATED_SPECIAL_TOKENS,
                       "default_num_special_tokens": GENERATED_SPECIAL_TOKENS, "version": version},
            "vocab": vocab, "special_tokens": special}
    path = Path(path)
    path.write_text(json.dumps(data))
    return path


def build_random_mistral(folder: str | Path, shape: str = "tiny", seed: int = 0, device: str = "cpu",
                         dtype: str = "bfloat16", system_prompt: str | None = None,
                         tokenizer: str = "shipped") -> Path:
    """Write a random-weight Mistral of `shape` into `folder` (replaced if present) and return the folder.

    `tokenizer`: ``"shipped"`` (mistral-common's own tekken file, 131,072 ids) or a version to generate
    (``"v7"``, ``"v11"``, ``"v13"``); the model's vocabulary matches the tokenizer's.
    """
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    if tokenizer != "shipped" and tokenizer not in TEKKEN_VERSIONS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose 'shipped' or one of {TEKKEN_VERSIONS}")
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if tokenizer == "shipped":
        shutil.copy(tekken_file(), tmp / "tekken.json")
        vocab_size = 131072
    else:
        write_tekken(tmp / "tekken.json", tokenizer)
        vocab_size = 256 + GENERATED_SPECIAL_TOKENS
    config = MistralConfig(vocab_size=vocab_size, rope_theta=1_000_000_000.0, sliding_window=None,
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
    if system_prompt is not None:
        (tmp / "SYSTEM_PROMPT.txt").write_text(system_prompt)
    (tmp / "RANDOM_WEIGHTS.json").write_text(json.dumps({"shape": shape, "seed": seed, "tokenizer": tokenizer}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
