"""Magistral-Small-2506 shape in NF4 on one GPU, through the kit: load, reload, prefill, decode, a chat turn.

Random weights (no hub access on the device): the exact Magistral-Small-2506 text-decoder shape is built in
bf16 on the GPU, saved, and loaded through ``magistral_kit.load_model`` (bf16 -> NF4). Everything is measured in
ONE process against plain ``model.generate``; every figure is the median of >= 3 runs and is written to the
results JSON as soon as it is known (a time-out keeps what was measured).

Random weights never emit end-of-sequence, so new tokens are capped; they also give near-tied logits, so the
graph/compiled paths are checked against a full eager forward only where the top-2 logits are clearly apart.

Usage (device): python bench/gpu_chat.py [--layers N] [--quick] [--no-compile] [--out results.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GAP = 0.25
RES: dict[str, Any] = {}
OUT_PATH = Path("gpu_chat.json")


def log(key: str, value: Any) -> None:
    RES[key] = value
    print(f"[{time.strftime('%H:%M:%S')}] {key}: {json.dumps(value, default=str)}", flush=True)
    tmp = OUT_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(RES, indent=1, default=str))
    os.replace(tmp, OUT_PATH)


def med(xs: list[float], nd: int = 3) -> float:
    return round(statistics.median(xs), nd)


def gib(x: float) -> float:
    return round(x / 2**30, 2)


DEV = "cuda"  # --dry-cpu: a tiny shape on the CPU, the eager loop instead of the graph (checks this script)
MODE = "graph"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak() -> float:
    return gib(torch.cuda.max_memory_allocated()) if DEV == "cuda" else 0.0


# --------------------------------------------------------------------------------------------------------------
def build_bf16(folder: Path, layers: int) -> None:
    """Random Magistral-shaped bf16 checkpoint + tekken.json, the layout `random_mistral` writes.

    Initialised on the GPU in bf16 (the default-dtype switch avoids a 94 GB float32 model).
    """
    from transformers import MistralConfig, MistralForCausalLM

    from magistral_kit.model.random_mistral import SHAPES, tekken_file

    shape = dict(SHAPES["magistral"] if DEV == "cuda" else SHAPES["tiny"], num_hidden_layers=layers)
    cfg = MistralConfig(vocab_size=131072, rope_theta=1_000_000_000.0, sliding_window=None, rms_norm_eps=1e-5,
                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", **shape)
    t = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEV):
            model = MistralForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    sync()
    log("params_b", round(sum(p.numel() for p in model.parameters()) / 1e9, 3))
    log("t_random_init_s", round(time.perf_counter() - t, 1))
    t = time.perf_counter()
    model.save_pretrained(folder, max_shard_size="5GB", safe_serialization=True)
    shutil.copy(tekken_file(), folder / "tekken.json")
    (folder / "RANDOM_WEIGHTS.json").write_text(json.dumps({"shape": "magistral", "layers": layers}))
    log("t_save_bf16_s", round(time.perf_counter() - t, 1))
    del model
    reset_peak()


def random_prompt(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, 130000, (1, n), generator=g)


def plain_generate(model: Any, ids: torch.Tensor, new: int) -> dict[str, float]:
    """Plain generate, timed per token through a streamer: prefill = time to the first token."""
    stamps: list[float] = []

    class Stamp:
        def __init__(self) -> None:
            self.prompt = True

        def put(self, value: torch.Tensor) -> None:
            if self.prompt:
                self.prompt = False
                return
            stamps.extend([time.perf_counter()] * value.numel())

        def end(self) -> None:
            pass

    ids = ids.to(DEV)
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, streamer=Stamp(), pad_token_id=0,
                             temperature=None, top_p=None, top_k=None)
    sync()
    n = out.shape[1] - ids.shape[1]
    first = stamps[0] - t
    rate = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0
    return {"prefill_s": first, "decode_tok_per_s": rate, "new": n}


def check_against_forward(model: Any, ids: torch.Tensor, res: Any) -> dict[str, Any]:
    """Graph/compiled logits vs one full eager forward (transformers' own attention) over the same sequence."""
    full = torch.cat([ids, torch.tensor([res.ids])], dim=1).to(DEV)
    n = len(res.ids)
    with torch.inference_mode():
        ref = model(input_ids=full, logits_to_keep=n + 1).logits[0, :n].float().cpu()
    mine = torch.stack(res.logits)
    clear = agree = 0
    for i in range(n):
        top2 = ref[i].topk(2).values
        if top2[0] - top2[1] > GAP:
            clear += 1
            agree += int(res.ids[i] == int(ref[i].argmax()))
    return {"steps": n, "clear_steps": clear, "clear_agree": agree,
            "max_abs_logit_diff": round(float((mine - ref).abs().max()), 4),
            "mean_abs_logit_diff": round(float((mine - ref).abs().mean()), 5)}


# --------------------------------------------------------------------------------------------------------------
def main() -> None:
    global OUT_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="fewer/shorter runs (a smoke test)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-chat", action="store_true")
    ap.add_argument("--dry-cpu", action="store_true", help="tiny shape on the CPU, eager loop: checks the script")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_chat.json"))
    ap.add_argument("--work", default=os.environ.get("BENCH_DIR") or os.path.join(tempfile.gettempdir(), "gpuchat"))
    args = ap.parse_args()
    global DEV, MODE
    if args.dry_cpu:
        DEV, MODE = "cpu", "eager"
    OUT_PATH = Path(args.out)
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.setdefault("MAGISTRAL_KIT_DATA", str(work / "data"))
    os.environ.setdefault("MAGISTRAL_KIT_TMP", str(work / "tmp"))

    import bitsandbytes
    import transformers

    import magistral_kit
    from magistral_kit.model import fast_decode as fd
    from magistral_kit.model import nf4_checkpoint as ck
    from magistral_kit.config import KitConfig

    runs = 3
    new_dec = 64 if args.quick else 256
    new_plain = 16 if args.quick else 64
    log("device", torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (dry run)")
    log("layers", args.layers)
    log("quick", args.quick)
    log("versions", {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__, **_other_versions()})
    try:
        log("driver", subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    st = os.statvfs(work)
    log("disk_free_gb", round(st.f_bavail * st.f_frsize / 1e9, 1))

    # 1. bf16 checkpoint --------------------------------------------------------------------------------------
    src = work / "magistral-random"
    src.mkdir()
    build_bf16(src, args.layers)

    # 2. load through the kit: bf16 -> NF4 --------------------------------------------------------------------
    cfg = KitConfig(model=str(src), quantization="nf4", device=DEV, temperature=0.0, max_new_tokens=128,
                    context_budget=40_000)
    reset_peak()
    t = time.perf_counter()
    lm = magistral_kit.load_model(cfg, progress=False) if hasattr(magistral_kit, "load_model") else \
        __import__("magistral_kit.model.loading", fromlist=["load_model"]).load_model(cfg, progress=False)
    sync()
    log("t_load_quantize_from_bf16_s", round(time.perf_counter() - t, 2))
    log("kit_load_seconds", round(lm.load_seconds, 2))
    log("kit_loaded_from", getattr(lm, "loaded_from", ""))
    log("gpu_alloc_after_load_gib", gib(torch.cuda.memory_allocated()) if DEV == "cuda" else 0)
    log("gpu_peak_during_load_gib", peak())
    for p in src.glob("*.safetensors"):  # 64 GiB disk: the bf16 copy goes once quantized
        p.unlink()
    log("bf16_deleted", True)

    # 3. pre-quantized checkpoint: save once, reload (median of 3) -------------------------------------------
    q4 = work / "nf4"
    t = time.perf_counter()
    ck.save_nf4(lm.model, q4, source=None)
    log("t_save_nf4_with_hashes_s", round(time.perf_counter() - t, 1))
    log("nf4_checkpoint_gb", round(sum(p.stat().st_size for p in q4.iterdir()) / 1e9, 2))
    reloads = []
    for _ in range(runs):
        lm.model = None
        fd_runner_clear()
        reset_peak()
        t = time.perf_counter()
        model = ck.load_nf4(q4, DEV)
        sync()
        reloads.append(time.perf_counter() - t)
        lm.model = model
        del model
    log("t_load_prequantized_nf4_s_runs", [round(x, 2) for x in reloads])
    log("t_load_prequantized_nf4_s", med(reloads, 2))
    log("gpu_alloc_prequantized_gib", gib(torch.cuda.memory_allocated()) if DEV == "cuda" else 0)
    t = time.perf_counter()
    ck.verify(q4, full=True)
    log("t_verify_full_hash_s", round(time.perf_counter() - t, 1))
    model = lm.model
    eos: list[int] = []  # random weights: decode lengths fixed by the cap

    # 4. prefill + decode: plain generate ---------------------------------------------------------------------
    p1k, p8k = random_prompt(1024, 1), random_prompt(8000, 2)
    plain_generate(model, p1k[:, :32], 4)  # warm-up
    for label, prompt, new in (("1k", p1k, new_plain), ("8k", p8k, max(8, new_plain // 2))):
        reset_peak()
        rs = [plain_generate(model, prompt, new) for _ in range(runs)]
        log(f"plain_{label}_prefill_s", med([r["prefill_s"] for r in rs]))
        log(f"plain_{label}_decode_tok_per_s_runs", [round(r["decode_tok_per_s"], 2) for r in rs])
        log(f"plain_{label}_decode_tok_per_s", med([r["decode_tok_per_s"] for r in rs], 2))
        log(f"plain_{label}_gpu_peak_gib", peak())

    # 5. fast paths ----------------------------------------------------------------------------------------------
    variants = [("graph", False)] + ([] if args.no_compile else [("compiled", True)])
    for name, comp in variants:
        for cache in (8192, 32768):
            key = f"{name}_{cache // 1024}k"
            fd.release_runner(model)
            reset_peak()
            try:
                first = fd.fast_generate(model, p1k, max_new_tokens=new_dec, eos_token_ids=eos,
                                         cache_steps=(cache,), compile=comp, mode=MODE, return_logits=True)
                log(f"{key}_first_call", first.as_dict())
                log(f"{key}_check_vs_eager_forward", check_against_forward(model, p1k, first))
                rs = [fd.fast_generate(model, random_prompt(1024, 10 + i), max_new_tokens=new_dec,
                                       eos_token_ids=eos, cache_steps=(cache,), compile=comp, mode=MODE)
                      for i in range(runs)]
                assert all(r.reused_runner and r.capture_seconds == 0 and r.path == (name if MODE == "graph" else "eager") for r in rs), \
                    [r.as_dict() for r in rs]
                log(f"{key}_decode_tok_per_s_runs", [round(r.decode_tok_per_s, 2) for r in rs])
                log(f"{key}_decode_tok_per_s", med([r.decode_tok_per_s for r in rs], 2))
                log(f"{key}_captures", fd.current_runner(model).captures)
                if cache == 8192:
                    pf = {}
                    for label, prompt in (("1k", p1k), ("8k", p8k)):
                        pr = [fd.fast_generate(model, prompt, max_new_tokens=1, cache_steps=(cache,),
                                               compile=comp, mode=MODE) for _ in range(runs)]
                        pf[label] = med([r.prefill_seconds for r in pr])
                        log(f"{key}_prefill_{label}_s", pf[label])
                    sample = fd.fast_generate(model, p1k, max_new_tokens=new_dec, cache_steps=(cache,),
                                              compile=comp, mode=MODE, temperature=0.7, top_p=0.95, seed=0)
                    log(f"{key}_sampling_t0.7_p0.95_tok_per_s", round(sample.decode_tok_per_s, 2))
                log(f"{key}_gpu_peak_gib", peak())
            except Exception as exc:  # record, keep measuring the rest
                log(f"{key}_error", f"{type(exc).__name__}: {str(exc)[:400]}")
    fd.release_runner(model)

    # 6. a memory-chat turn through open_chat -------------------------------------------------------------------
    if not args.no_chat:
        chat_turns(cfg, work, runs)
    log("done", True)


def fd_runner_clear() -> None:
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _other_versions() -> dict[str, str]:
    out = {}
    for name in ("mistral_common", "accelerate", "safetensors", "tokenizers", "huggingface_hub",
                 "sentence_transformers", "memos", "triton"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception as exc:  # absent on the device is a fact worth recording
            out[name] = f"absent ({type(exc).__name__})"
    return out


def random_embedder(folder: Path) -> Path:
    """A sentence-transformers folder with all-MiniLM-L6-v2's shape and random weights (timing only)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(33, 127)]
    words += [f"w{i}" for i in range(30522 - len(words))]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512)).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256,
                                                                  "do_lower_case": False}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384,
                                                                  "pooling_mode_mean_tokens": True}))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    return folder


def chat_turns(cfg: Any, work: Path, runs: int) -> None:
    """Full turns (retrieve, generate, extract, store) through open_chat, fast decode vs plain generate."""
    try:
        from magistral_kit.chat.session import open_chat
    except Exception as exc:
        log("chat_error", f"open_chat not importable: {type(exc).__name__}: {str(exc)[:300]}")
        return
    try:
        emb = random_embedder(work / "embedder")
        log("chat_embedder", "RANDOM-INIT all-MiniLM-L6-v2-shaped BERT (timing only; real weights not carried)")
    except Exception as exc:
        log("chat_error", f"random embedder: {type(exc).__name__}: {str(exc)[:300]}")
        return
    messages = ["Hi! I'm Ana, a marine biologist in Lisbon. I study octopus cognition.",
                "My sister Marta is visiting next week; we plan to hike in Sintra.",
                "What do you remember about me and my plans?", "Any tips for the hike?"]
    for fast in (True, False):
        label = "fast" if fast else "plain"
        try:
            c = cfg.replace(fast_decode=fast, embedder=str(emb), cube_dir=str(work / f"cube-{label}"),
                            max_new_tokens=128, extraction_max_new_tokens=64)
            chat = open_chat(c, progress=False)
            rows = []
            n = runs + 1 if fast else runs
            for i in range(n):
                pieces: list[str] = []
                t = time.perf_counter()
                turn = chat.send(messages[i % len(messages)], on_text=pieces.append)  # streamed, as in a notebook
                total = time.perf_counter() - t
                rows.append(_turn_row(turn, total))
                raw = getattr(getattr(turn, "reply", None), "raw", None)
                rows[-1]["streamed_pieces"] = len(pieces)
                rows[-1]["streamed_equals_reply"] = raw is not None and "".join(pieces) == raw
                log(f"chat_{label}_turn{i + 1}", rows[-1])
            steady = rows[1:] if fast else rows
            log(f"chat_{label}_turn_s_median", med([r["total_s"] for r in steady], 2))
            if hasattr(chat, "close"):
                chat.close()
        except Exception as exc:
            import traceback

            log(f"chat_{label}_error", f"{type(exc).__name__}: {str(exc)[:300]} | "
                                       f"{traceback.format_exc()[-600:]}")


def _turn_row(turn: Any, total: float) -> dict[str, Any]:
    row: dict[str, Any] = {"total_s": round(total, 2)}
    timings = getattr(turn, "timings", None)
    steps = getattr(timings, "steps", None)
    if isinstance(steps, dict):
        row["steps_s"] = {k: round(v, 3) for k, v in steps.items()}
    reply = getattr(turn, "reply", None)
    for attr in ("tokens_in", "tokens_out", "path", "stopped", "notes"):
        if reply is not None and hasattr(reply, attr):
            row[attr] = getattr(reply, attr)
    row["stored"] = len(getattr(turn, "stored_ids", []) or [])
    row["problems"] = list(getattr(turn, "problems", []) or [])[:3]
    for attr in ("retrieved",):
        v = getattr(turn, attr, None)
        if v is not None:
            row[attr] = len(v) if hasattr(v, "__len__") else v
    return row



# --- tables for bench/report.py (README.md and bench/GPU.md); pure functions of the results dict -------------
def _runs(xs: list[float], nd: int = 1) -> str:
    return ", ".join(f"{x:.{nd}f}" for x in xs)


def _machine(r: dict) -> str:
    v = r["versions"]
    return (f"{r['device']}, Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
            f"bitsandbytes {v['bitsandbytes']}; the Magistral-Small-2506 shape ({r['params_b']:.2f} B parameters, "
            f"{r['layers']} layers) with random weights, batch 1, greedy, 1,024-token prompt")


def _turns(r: dict, kind: str) -> list[dict]:
    return [r[k] for k in sorted(r) if k.startswith(f"chat_{kind}_turn") and k[len(f"chat_{kind}_turn"):].isdigit()]


def markdown_table(r: dict) -> str:
    """README's GPU summary."""
    c8, c32 = r["compiled_8k_first_call"], r["compiled_32k_first_call"]
    rows = [
        "| | plain `generate` | fast, CUDA graph | fast, compiled + graph |",
        "|---|---|---|---|",
        f"| decode tok/s, 8,192-token cache | {r['plain_1k_decode_tok_per_s']:.1f} (dynamic cache) | "
        f"{r['graph_8k_decode_tok_per_s']:.1f} | {r['compiled_8k_decode_tok_per_s']:.1f} (compile "
        f"{c8['compile_seconds']:.0f} s once per cache size) |",
        f"| decode tok/s, 32,768-token cache | – | {r['graph_32k_decode_tok_per_s']:.1f} | "
        f"{r['compiled_32k_decode_tok_per_s']:.1f} (compile {c32['compile_seconds']:.0f} s) |",
        f"| GPU peak, 8k cache | – | {r['graph_8k_gpu_peak_gib']:.2f} GiB | {r['compiled_8k_gpu_peak_gib']:.2f} GiB |",
        f"| full memory-chat turn, median | {r['chat_plain_turn_s_median']:.2f} s | {r['chat_fast_turn_s_median']:.2f} s | – |",
    ]
    return "\n".join(rows) + (
        f"\n\nLoad through `load_model`: bf16 → NF4 {r['kit_load_seconds']:.1f} s; pre-quantized NF4 reload "
        f"{r['t_load_prequantized_nf4_s']:.2f} s (median of {_runs(r['t_load_prequantized_nf4_s_runs'], 2)}). "
        f"{_machine(r)}; medians of 3 (`bench/results/gpu_chat_h100.json`).")


def decode_table(r: dict) -> str:
    rows = ["| path | cache | decode tok/s, median | runs | first call: capture / compile | GPU peak |",
            "|---|---|---|---|---|---|"]
    for label, key in (("plain `model.generate` (dynamic cache)", "plain_1k"),
                       ("plain `model.generate`, 8,000-token prompt", "plain_8k")):
        rows.append(f"| {label} | – | {r[key + '_decode_tok_per_s']:.1f} | {_runs(r[key + '_decode_tok_per_s_runs'])} "
                    f"| – | {r[key + '_gpu_peak_gib']:.2f} GiB |")
    for label, key in (("fast, CUDA graph", "graph_8k"), ("fast, CUDA graph", "graph_32k"),
                       ("fast, compiled + graph", "compiled_8k"), ("fast, compiled + graph", "compiled_32k")):
        first = r[key + "_first_call"]
        comp = f"{first['compile_seconds']:.1f} s" if first["compile_seconds"] else "–"
        rows.append(f"| {label} | {first['cache_len']:,} | {r[key + '_decode_tok_per_s']:.1f} | "
                    f"{_runs(r[key + '_decode_tok_per_s_runs'])} | {first['capture_seconds']:.2f} s / {comp} | "
                    f"{r[key + '_gpu_peak_gib']:.2f} GiB |")
    sampling = ", ".join(f"{r[k]:.1f} {k.split('_')[0]}" for k in sorted(r) if "_sampling_" in k)
    return "\n".join(rows) + (f"\n\nSampling (temperature 0.7, top_p 0.95), tok/s at 8k: {sampling}. "
                              f"{_machine(r)} (`bench/results/gpu_chat_h100.json`).")


def correctness_table(r: dict) -> str:
    rows = ["| variant | steps with a clear top-2 gap | argmax agrees | max / mean abs logit difference |",
            "|---|---|---|---|"]
    for key in ("graph_8k", "graph_32k", "compiled_8k", "compiled_32k"):
        c = r[key + "_check_vs_eager_forward"]
        rows.append(f"| {key.replace('_', ' ')} | {c['clear_steps']} of {c['steps']} | {c['clear_agree']} "
                    f"({100 * c['clear_agree'] / c['clear_steps']:.0f} %) | {c['max_abs_logit_diff']:.2f} / "
                    f"{c['mean_abs_logit_diff']:.3f} |")
    return "\n".join(rows) + f"\n\nClear gap: top-2 logits more than {GAP} apart (`bench/results/gpu_chat_h100.json`)."


def prefill_table(r: dict) -> str:
    return "\n".join([
        "| prompt | plain generate | fast, graph (eager prefill in chunks of 2,048) |", "|---|---|---|",
        f"| 1,024 tokens | {r['plain_1k_prefill_s']:.3f} s | {r['graph_8k_prefill_1k_s']:.3f} s |",
        f"| 8,000 tokens | {r['plain_8k_prefill_s']:.3f} s | {r['graph_8k_prefill_8k_s']:.3f} s |",
    ]) + "\n\nMedians of 3 (`bench/results/gpu_chat_h100.json`)."


def load_table(r: dict) -> str:
    return "\n".join([
        "| what | figure |", "|---|---|",
        f"| random bf16 checkpoint: init on GPU / save | {r['t_random_init_s']:.1f} s / {r['t_save_bf16_s']:.1f} s |",
        f"| `load_model`, bf16 → NF4 quantized on load | {r['kit_load_seconds']:.1f} s, GPU peak during load "
        f"{r['gpu_peak_during_load_gib']:.2f} GiB, {r['gpu_alloc_after_load_gib']:.2f} GiB after |",
        f"| save pre-quantized NF4 (+ SHA-256 of every file) | {r['t_save_nf4_with_hashes_s']:.1f} s, "
        f"{r['nf4_checkpoint_gb']:.2f} GB |",
        f"| reload pre-quantized NF4 (runs {_runs(r['t_load_prequantized_nf4_s_runs'], 2)}) | median "
        f"{r['t_load_prequantized_nf4_s']:.2f} s, {r['gpu_alloc_prequantized_gib']:.2f} GiB |",
        f"| full re-hash of the checkpoint (`verify(full=True)`) | {r['t_verify_full_hash_s']:.1f} s |",
    ]) + "\n\nPage cache warm: the files had just been written (`bench/results/gpu_chat_h100.json`)."


def turn_table(r: dict) -> str:
    rows = ["| path | turns | total, median | generate | extract | retrieve | store |", "|---|---|---|---|---|---|---|"]
    for label, kind, median in (("fast decode (graph, 8k cache)", "fast", r["chat_fast_turn_s_median"]),
                                ("plain generate", "plain", r["chat_plain_turn_s_median"])):
        turns = _turns(r, kind)

        def span(step: str) -> str:
            xs = [t["steps_s"][step] for t in turns if step in t["steps_s"]]
            return f"{min(xs):.3f}–{max(xs):.3f} s" if xs else "–"

        rows.append(f"| {label} | {len(turns)} | {median:.2f} s | {span('generate')} | {span('extract')} | "
                    f"{span('retrieve')} | {span('store')} |")
    first = _turns(r, "fast")[0]
    return "\n".join(rows) + (
        f"\n\n{first['tokens_out']} new tokens per reply; embedder: {r['chat_embedder']} "
        "(`bench/results/gpu_chat_h100.json`).")

if __name__ == "__main__":
    main()
