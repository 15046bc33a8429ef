"""Magistral-Small-2506 shape in NF4 on one GPU, through the kit: load, reload, prefill, decode, a chat turn.

Random weights (no hub access on the device): the exact Magistral-Small-2506 text-decoder shape is built in
bf16 on the GPU, saved, and loaded through ``magistral_kit.load_model`` (bf16 -> NF4). Everything is measured in
ONE process against plain ``model.generate``; every figure is the median of >= 3 runs and is written to the
results JSON as soon as it is known (a time-out keeps what was measured).

Random weights never emit end-of-sequence, so new tokens are capped; they also give near-tied logits, so the
graph/compiled paths are checked against a full eager forward only where the top-2 logits are clearly apart.

The kit's own NF4 decode kernels (magistral_kit/model/nf4_kernel.py) are measured against bitsandbytes' batch-1
kernel per linear shape and per decoder layer (CUDA graphs of calls rotating over enough weights to defeat the
L2), with a sweep of their launch shapes; the decode paths run with the kit kernels, plus one bitsandbytes graph
run for reference, and a torch.profiler breakdown of one decode step.

Usage (device): python bench/gpu_chat.py [--layers N] [--quick] [--no-compile] [--kernels-only] [--out results.json]
``markdown_table(json.load(open(results)))`` renders the README/GPU.md tables from a results file.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
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
# NF4 kernels: bitsandbytes' batch-1 kernel vs the kit's, per linear shape and per decoder layer
# --------------------------------------------------------------------------------------------------------------
LINEAR_SHAPES = {"q": (4096, 5120), "k": (1024, 5120), "v": (1024, 5120), "o": (5120, 4096),
                 "gate": (32768, 5120), "up": (32768, 5120), "down": (5120, 32768)}


class _QLin:
    """A bitsandbytes NF4 weight (packed bytes + quant_state) as the kernels and bnb.matmul_4bit see it."""

    def __init__(self, weight: Any) -> None:
        self.weight, self.bias = weight, None


def nf4_bytes(n: int, k: int) -> int:
    """Bytes one batch-1 product must read: packed weights, uint8 absmax, float32 second-level scales."""
    return n * k // 2 + n * k // 64 + 4 * (n * k // 64 // 256)


def random_nf4(n: int, k: int) -> _QLin:
    """One random n x k weight quantized by bitsandbytes as the model loader does (NF4, double quant, 64)."""
    import bitsandbytes.functional as bnbf

    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) * 0.02
    q, st = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True, blocksize=64)
    q.quant_state = st
    return _QLin(q)


def random_linears(scale_bytes: float = 4e8, max_copies: int = 48) -> dict[str, list[_QLin]]:
    """Copies of every Magistral linear shape quantized by bitsandbytes (>= ~6x the 60 MB L2 per shape)."""
    out: dict[str, list[_QLin]] = {}
    for name, (n, k) in LINEAR_SHAPES.items():
        copies = min(max_copies, max(3, math.ceil(scale_bytes / nf4_bytes(n, k))))
        out[name] = [random_nf4(n, k) for _ in range(copies)]
    torch.cuda.empty_cache()
    return out


def model_linears(model: Any) -> dict[str, list[_QLin]]:
    out: dict[str, list[_QLin]] = {name: [] for name in LINEAR_SHAPES}
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        for name, mod in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("o", a.o_proj),
                          ("gate", m.gate_proj), ("up", m.up_proj), ("down", m.down_proj)):
            out[name].append(_QLin(mod.weight))
    return out


def graph_us(calls: list[Any], reps: int = 25) -> float:
    """Median µs per call of one CUDA graph that makes every call once (after a warm-up that JIT-compiles)."""
    for c in calls[:2]:
        c()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1000 / len(calls))
    del g
    return statistics.median(ts)


def pick(v: str, order: bool = False) -> tuple[int, ...]:
    """'br4_w1_s2' -> (4, 1, 2); order=True gives DecodeSplits' (rows, split, warps)."""
    parts = dict((p_[0], int(p_[1:])) for p_ in v.replace("br", "r").split("_"))
    br, w, sp = parts["r"], parts.get("w", 1), parts.get("s", 1)
    return (br, sp, w) if order else (br, w, sp)


def triton_launches(ws: dict[str, list[Any]], sb: Any, code: torch.Tensor,
                    inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The decode step's four Triton launches (qkv, o, gate_up, down) as functions of a layer index (weights
    rotated over ``ws``), launched as KitDecoder launches them with launch shapes ``sb``: each input (given in
    lane order) stays in lane order where the launch's K splits allow it, else is put back in natural order once,
    here, outside the timed calls."""
    from magistral_kit.model import nf4_kernel as nk

    def rot(name: str, i: int) -> Any:
        return ws[name][i % len(ws[name])]

    lanes = {"qkv": nk.lane_order_applies(inputs["qkv"].numel(), sb.qkv[1]),
             "o": nk.lane_order_applies(inputs["o"].numel(), sb.o[1]), "gate_up": True,
             "down": nk.lane_order_applies(inputs["down"].numel(), sb.down[1])}
    x = {name: v if lanes[name] else nk.natural_order(v).contiguous() for name, v in inputs.items()}

    def gemv(name: str, parts: tuple[str, ...]) -> Any:
        rows, split, warps = getattr(sb, name)

        def call(i: int) -> Any:
            wl = [rot(p_, i) for p_ in parts]
            return nk.nf4_gemv_launch(x[name], *nk._flat(wl), code, wl[0].code2, [w.n for w in wl], wl[0].k, split,
                                      rows, warps, lanes[name])
        return call

    def gate_up(i: int) -> Any:
        g, u = rot("gate", i), rot("up", i)
        return nk.nf4_gate_up_launch(x["gate_up"], *nk._flat([g, u]), code, g.code2, g.n, g.k, sb.gate_up[0],
                                     sb.gate_up[1], True, lanes["down"])

    return {"qkv": gemv("qkv", ("q", "k", "v")), "o": gemv("o", ("o",)), "gate_up": gate_up,
            "down": gemv("down", ("down",))}


def kernel_bench(lins: dict[str, list[_QLin]], quick: bool = False) -> dict[str, Any]:
    """µs and GB/s per shape for bnb and for each launch shape of the kit kernel; errors vs an fp32 reference."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from magistral_kit.model import nf4_kernel as nk

    code = nk._code_table(torch.device(DEV))
    ws = {name: [nk.nf4_weight(q)[0] for q in lst] for name, lst in lins.items()}
    g = torch.Generator(device=DEV).manual_seed(0)
    out: dict[str, Any] = {"shapes": {}}
    # launch shapes: (rows per program, warps per program) x K splits
    # (an earlier sweep with 2 and 4 warps per program, each warp on its own rows, never won: one warp is kept)
    shapes_bw = ((2, 1), (4, 1)) if quick else ((1, 1), (2, 1), (4, 1), (8, 1))
    splits = (1, 4) if quick else (1, 2, 3, 4, 5, 8, 16)

    def rot(name: str, n_calls: int) -> list[int]:
        return [i % len(lins[name]) for i in range(max(n_calls, len(lins[name])))]

    def key(br: int, w: int, sp: int | None = None) -> str:
        return f"br{br}_w{w}" + ("" if sp is None else f"_s{sp}")

    for name, (n, k) in LINEAR_SHAPES.items():
        x = (torch.randn(k, device=DEV, generator=g) * 0.5).to(torch.bfloat16)
        q0 = lins[name][0].weight
        ref = bnbf.dequantize_4bit(q0, q0.quant_state).float() @ x.float()
        theirs = bnb.matmul_4bit(x.view(1, -1), q0.t(), quant_state=q0.quant_state).float().view(-1)
        scale = float(ref.abs().max())
        errs = []
        for br, w in shapes_bw:  # every launch shape is checked, not only timed
            for sp in splits:
                if sp > 1 and k // sp < 1024:
                    continue
                lane = nk.lane_order_applies(k, sp)  # the decode step hands such launches x in lane order
                wt = ws[name][0]
                mine = nk.nf4_gemv_launch(nk.lane_order(x) if lane else x, [wt.words], [wt.absmax], [wt.absmax2],
                                          [wt.offset], code, wt.code2, [n], k, sp, br, w, lane).sum(0).float()
                errs.append(float((mine - ref).abs().max()) / scale)
        row: dict[str, Any] = {"n": n, "k": k, "mbytes": round(nf4_bytes(n, k) / 1e6, 2),
                               "err_ours": round(max(errs), 5),
                               "err_bnb": round(float((theirs - ref).abs().max()) / scale, 5)}
        twin = {"v": "k", "up": "gate"}.get(name)
        if twin and twin in out["shapes"] and not quick:  # same shape as one already timed: time only the best
            variants = {out["shapes"][twin]["best"]: None}
        else:
            variants = {key(br, w, sp): None for br, w in shapes_bw for sp in splits if sp == 1 or k // sp >= 1024}
        idx = rot(name, 64)
        x2 = x.view(1, -1)
        row["bnb_us"] = round(graph_us([
            (lambda q=lins[name][i].weight: bnb.matmul_4bit(x2, q.t(), quant_state=q.quant_state)) for i in idx]), 2)
        xl = nk.lane_order(x) if k % nk.STEP == 0 else x
        for v in variants:
            br, w, sp = pick(v)
            lane = nk.lane_order_applies(k, sp)
            variants[v] = round(graph_us([
                (lambda wt=ws[name][i], br=br, w=w, sp=sp, lane=lane: nk.nf4_gemv_launch(
                    xl if lane else x, [wt.words], [wt.absmax], [wt.absmax2], [wt.offset], code, wt.code2, [n], k,
                    sp, br, w, lane)) for i in idx]), 2)
        best = min(variants, key=variants.get)
        row.update(ours=variants, best=best, ours_us=variants[best])
        gb = nf4_bytes(n, k) / 1e3
        row["bnb_gbs"], row["ours_gbs"] = round(gb / row["bnb_us"], 1), round(gb / row["ours_us"], 1)
        out["shapes"][name] = row
        log("kernel_" + name, {kk: v for kk, v in row.items() if kk != "ours"})

    # x in natural order vs lane order (what the decode step uses), same launch: the gain of the lane order
    order: dict[str, Any] = {}
    for name in ("gate", "down", "q", "o"):
        if name not in out["shapes"]:
            continue
        n, k = LINEAR_SHAPES[name]
        br, w, sp = pick(out["shapes"][name]["best"])
        if not nk.lane_order_applies(k, sp):
            continue
        xa = (torch.randn(k, device=DEV, generator=g) * 0.5).to(torch.bfloat16)
        order[name] = {"launch": out["shapes"][name]["best"], "lane_us": out["shapes"][name]["ours_us"],
                       "natural_us": round(graph_us([
                           (lambda wt=ws[name][i], br=br, w=w, sp=sp: nk.nf4_gemv_launch(
                               xa, [wt.words], [wt.absmax], [wt.absmax2], [wt.offset], code, wt.code2, [n], k, sp, br,
                               w)) for i in rot(name, 64)]), 2)}
    out["x_order"] = order
    log("kernel_x_order", order)

    # q|k|v in one launch, gate|up with the silu epilogue
    (nq_, hid), nk_ = LINEAR_SHAPES["q"], LINEAR_SHAPES["k"][0]
    inter = LINEAR_SHAPES["gate"][0]
    x5 = (torch.randn(hid, device=DEV, generator=g) * 0.5).to(torch.bfloat16)
    x5l = nk.lane_order(x5)
    nq = len(lins["q"])
    qkv = {}
    for br, w in shapes_bw:
        for sp in splits[:3]:
            qkv[key(br, w, sp)] = round(graph_us([
                (lambda i=i, br=br, w=w, sp=sp, lane=nk.lane_order_applies(hid, sp): nk.nf4_gemv_launch(
                    x5l if lane else x5,
                    *nk._flat([ws["q"][i % nq], ws["k"][i % len(ws["k"])], ws["v"][i % len(ws["v"])]]),
                    code, ws["q"][0].code2, [nq_, nk_, nk_], hid, sp, br, w, lane)) for i in range(max(48, nq))]), 2)
    gu = {}
    ng = len(lins["gate"])
    for br, w in shapes_bw:
        gu[key(br, w)] = round(graph_us([
            (lambda i=i, br=br, w=w: nk.nf4_gate_up_launch(
                x5l, *nk._flat([ws["gate"][i % ng], ws["up"][i % len(ws["up"])]]), code, ws["gate"][0].code2,
                inter, hid, br, w, True, True)) for i in range(max(8, ng))]), 2)
    out["qkv_fused"] = {"variants": qkv, "best": min(qkv, key=qkv.get), "us": min(qkv.values())}
    out["gate_up_fused"] = {"variants": gu, "best": min(gu, key=gu.get), "us": min(gu.values())}
    gbr, gw, _ = pick(out["gate_up_fused"]["best"])
    out["x_order"]["gate_up"] = {"launch": out["gate_up_fused"]["best"], "lane_us": out["gate_up_fused"]["us"],
                                 "natural_us": round(graph_us([
                                     (lambda i=i: nk.nf4_gate_up_launch(
                                         x5, *nk._flat([ws["gate"][i % ng], ws["up"][i % len(ws["up"])]]), code,
                                         ws["gate"][0].code2, inter, hid, gbr, gw)) for i in range(max(8, ng))]), 2)}
    log("kernel_qkv_fused", out["qkv_fused"])
    log("kernel_gate_up_fused", out["gate_up_fused"])

    # add + RMSNorm (one program) after a producer with S K-splits, by warps per program: the o and down
    # launches are chosen with the norm that reads their S partial sums, and the warps with both
    o_pick, down_pick = out["shapes"]["o"]["best"], out["shapes"]["down"]["best"]
    try:
        s_all = (1, 2, 4, 8, 16)
        hid_parts = {sp_: torch.randn(sp_, hid, device=DEV, generator=g) for sp_ in s_all}
        ln = torch.ones(hid, device=DEV, dtype=torch.bfloat16)
        norm: dict[str, float] = {}
        for w_ in (4, 8, 16):
            nk.NORM_WARPS = w_
            for sp_, parts in hid_parts.items():
                norm[f"s{sp_}_w{w_}"] = round(graph_us([
                    (lambda parts=parts: nk.add_rmsnorm_launch(x5, parts, ln, 1e-5)) for _ in range(64)]), 2)

        def with_norm(shape: str, w_: int) -> tuple[float, str]:
            def cost(v: str) -> float:
                s_ = next(p_ for p_ in s_all if p_ >= pick(v)[2])
                return out["shapes"][shape]["ours"][v] + norm[f"s{s_}_w{w_}"]
            best_v = min(out["shapes"][shape]["ours"], key=cost)
            return cost(best_v), best_v

        best_w = min((4, 8, 16), key=lambda w_: with_norm("o", w_)[0] + with_norm("down", w_)[0])
        o_pick, down_pick = with_norm("o", best_w)[1], with_norm("down", best_w)[1]
        out["add_rmsnorm"] = {"variants": norm, "warps_best": best_w,
                              "o_with_norm": o_pick, "down_with_norm": down_pick}
    except Exception as exc:  # keep the GEMV figures and the default warps
        out["add_rmsnorm"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "warps_best": 8}
    nk.NORM_WARPS = out["add_rmsnorm"]["warps_best"]
    log("kernel_add_rmsnorm", out["add_rmsnorm"])

    splits_best = nk.DecodeSplits(qkv=pick(out["qkv_fused"]["best"], order=True),
                                  o=pick(o_pick, order=True), gate_up=(gbr, gw),
                                  down=pick(down_pick, order=True),
                                  other=pick(out["shapes"]["q"]["best"], order=True))
    out["splits_best"] = {k_: list(v_) for k_, v_ in splits_best.__dict__.items()}

    # one decoder layer's linears, measured as a sequence over rotating weights
    nl = max(len(v) for v in lins.values()) if len(lins["gate"]) >= 8 else 8
    nl = min(nl, 40)
    seq_bnb = []
    for i in range(nl):
        pick_w = {nm: lins[nm][i % len(lins[nm])].weight for nm in LINEAR_SHAPES}
        for nm in LINEAR_SHAPES:
            xin = x5 if nm not in ("o", "down") else torch.full((LINEAR_SHAPES[nm][1],), 0.01, device=DEV,
                                                                  dtype=torch.bfloat16)
            seq_bnb.append(lambda q=pick_w[nm], xin=xin: bnb.matmul_4bit(xin.view(1, -1), q.t(),
                                                                          quant_state=q.quant_state))
    att = torch.full((LINEAR_SHAPES["o"][1],), 0.01, device=DEV, dtype=torch.bfloat16)
    act = torch.full((inter,), 0.01, device=DEV, dtype=torch.bfloat16)
    calls = triton_launches(ws, splits_best, code, {"qkv": x5l, "o": att, "gate_up": x5l, "down": act})
    seq_ours = [(lambda i=i, c=c: c(i)) for i in range(nl) for c in calls.values()]
    bnb_layer = graph_us(seq_bnb) * 7
    ours_layer = graph_us(seq_ours) * 4
    layer_bytes = sum(nf4_bytes(n, k) for n, k in LINEAR_SHAPES.values())
    out["layer"] = {"layers_rotated": nl, "bnb_us": round(bnb_layer, 1), "ours_us": round(ours_layer, 1),
                    "bnb_sum_of_shapes_us": round(sum(r["bnb_us"] for r in out["shapes"].values()), 1),
                    "mbytes": round(layer_bytes / 1e6, 1),
                    "ours_gbs": round(layer_bytes / 1e3 / ours_layer, 1),
                    "bnb_gbs": round(layer_bytes / 1e3 / bnb_layer, 1)}
    log("kernel_layer", out["layer"])
    out["pair"] = pair_bench(lins, out, quick)
    return out


def triton_cost(triton: dict[str, Any], name: str, norm_us: dict[int, float]) -> float | None:
    """The Triton GEMV's µs for one of the decode step's launches at its recorded best (o and down with the
    add + RMSNorm that reads their partial sums), as pair_bench prices the CUDA GEMV."""
    if name == "qkv":
        return triton.get("qkv_fused", {}).get("us")
    if name == "gate_up":
        return triton.get("gate_up_fused", {}).get("us")
    v = triton.get("add_rmsnorm", {}).get(f"{name}_with_norm") or triton["shapes"][name]["best"]
    us = triton["shapes"][name]["ours"].get(v)
    if us is None:
        return None
    split = pick(v)[2]
    return round(us + norm_us.get(next((s_ for s_ in sorted(norm_us) if s_ >= split), 16), 0.0), 2)


def pair_bench(lins: dict[str, list[_QLin]], triton: dict[str, Any], quick: bool = False) -> dict[str, Any]:
    """The CUDA GEMV (magistral_kit/model/nf4_cuda.py) on the same weights: error per shape against the fp32
    reference, a sweep of launch shapes (rows per warp, K splits, blocks per SM) for each of the decode step's
    four launches, and one layer's linears in sequence with the best of each (down's K splits priced with the
    add + RMSNorm that reads its partial sums, as for the Triton GEMV)."""
    import bitsandbytes.functional as bnbf

    from magistral_kit.model import nf4_cuda as nc
    from magistral_kit.model import nf4_kernel as nk

    kern, why = nc.load(torch.device(DEV))
    if kern is None:
        log("kernel_pair_error", why)
        return {"error": why}
    ws = {name: [nk.nf4_weight(q)[0] for q in lst] for name, lst in lins.items()}
    g = torch.Generator(device=DEV).manual_seed(1)
    hid, inter = LINEAR_SHAPES["q"][1], LINEAR_SHAPES["gate"][0]
    ko = LINEAR_SHAPES["o"][1]
    xs = {k_: nk.lane_order((torch.randn(k_, device=DEV, generator=g) * 0.5).to(torch.bfloat16))
          for k_ in {hid, ko, inter}}
    out: dict[str, Any] = {"cubin_bytes": len(kern.cubin), "sms": kern.sms, "err": {}}
    for name, (n, k) in LINEAR_SHAPES.items():
        q0 = lins[name][0].weight
        x = xs[k]
        ref = bnbf.dequantize_4bit(q0, q0.quant_state).float() @ nk.natural_order(x).float()
        mine = kern.gemv(x, [ws[name][0]], 1 if k % 2048 else 2, 4, 2).sum(0)
        out["err"][name] = round(float((mine - ref).abs().max()) / float(ref.abs().max()), 5)
    nl = min(40, max(len(v) for v in ws.values()))

    def rot(name: str, i: int) -> nk.NF4Weight:
        return ws[name][i % len(ws[name])]

    rows = (4,) if quick else nc.GEMV_ROWS
    per_sm = (2,) if quick else (1, 2, 3)
    launches = {
        "qkv": (rows, (1, 5), lambda i, r, sp, b: kern.gemv(xs[hid], [rot("q", i), rot("k", i), rot("v", i)], sp, r,
                                                                b)),
        "o": (rows, (1, 2, 4), lambda i, r, sp, b: kern.gemv(xs[ko], [rot("o", i)], sp, r, b)),
        "gate_up": (nc.GATE_UP_ROWS, (1,), lambda i, r, sp, b: kern.gate_up(xs[hid], rot("gate", i), rot("up", i), r,
                                                                             b, True)),
        "down": (rows, (2, 4, 8) if quick else (1, 2, 4, 8, 16), lambda i, r, sp, b: kern.gemv(xs[inter],
                                                                                               [rot("down", i)], sp,
                                                                                               r, b)),
    }
    norm = triton.get("add_rmsnorm", {})
    norm_us = {s_: norm.get("variants", {}).get(f"s{s_}_w{norm.get('warps_best', 16)}", 0.0) for s_ in (1, 2, 4, 8, 16)}
    best: dict[str, Any] = {}  # the launch used per linear: the CUDA GEMV's best, or None (the Triton GEMV)
    cuda_best: dict[str, Any] = {}
    for name, (rs, sps, call) in launches.items():
        variants = {}
        for r in rs:
            for sp in sps:
                for b in per_sm:
                    variants[f"r{r}_s{sp}_b{b}"] = round(graph_us([
                        (lambda i=i, r=r, sp=sp, b=b: call(i, r, sp, b)) for i in range(max(nl, 48))]), 2)
        # down's (and o's) partial sums are read by the add + RMSNorm: price the split with it
        cost = {v: us + (norm_us.get(int(v.split("_s")[1].split("_")[0]), 0.0) if name in ("o", "down") else 0.0)
                for v, us in variants.items()}
        pick_v = min(cost, key=cost.get)
        out[name] = {"variants": variants, "best": pick_v, "us": variants[pick_v]}
        r, sp, b = (int(p_[1:]) for p_ in pick_v.split("_"))
        cuda_best[name] = best[name] = [r, b] if name == "gate_up" else [r, sp, b]
        # the Triton GEMV's figure for the same launch (its best, priced the same way): the faster one is used
        tri = triton_cost(triton, name, norm_us)
        out[name]["triton_us_same_pricing"] = tri
        out[name]["pair_us_same_pricing"] = round(cost[pick_v], 2)
        if tri is not None and tri <= cost[pick_v]:
            best[name] = None
        log(f"kernel_pair_{name}", {k_: v_ for k_, v_ in out[name].items() if k_ != "variants"})
    out["launch_best"] = best
    sb = nk.DecodeSplits(**{k_: tuple(v_) for k_, v_ in triton["splits_best"].items()})
    triton_calls = triton_launches(ws, sb, nk._code_table(torch.device(DEV)),
                                   {"qkv": xs[hid], "o": xs[ko], "gate_up": xs[hid], "down": xs[inter]})

    def layer_us(choice: dict[str, Any]) -> float:
        seq = []
        for i in range(nl):
            for name, (_, _, call) in launches.items():
                if choice[name] is None:
                    seq.append(lambda i=i, c=triton_calls[name]: c(i))
                    continue
                r, *rest = choice[name]
                sp, b = (1, rest[0]) if name == "gate_up" else rest
                seq.append(lambda i=i, call=call, r=r, sp=sp, b=b: call(i, r, sp, b))
        return graph_us(seq) * 4

    layer_bytes = sum(nf4_bytes(n, k) for n, k in LINEAR_SHAPES.values())
    used = layer_us(best)
    out["layer"] = {"layers_rotated": nl, "us": round(used, 1), "gbs": round(layer_bytes / 1e3 / used, 1),
                    "linears_on_cuda": [n_ for n_, v_ in best.items() if v_ is not None],
                    "all_cuda_us": round(layer_us(cuda_best), 1) if cuda_best != best else round(used, 1),
                    "triton_us": triton.get("layer", {}).get("ours_us")}
    log("kernel_pair_layer", out["layer"])
    log("kernel_pair_err", out["err"])
    return out


COLD_JIT = r'''
import json, sys, time, torch
import bitsandbytes.functional as bnbf
from magistral_kit.model import nf4_kernel as nk
sp = json.loads(sys.argv[1])
dev = torch.device("cuda")
code = nk._code_table(dev)
def lin(n, k):
    q, st = bnbf.quantize_4bit(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, quant_type="nf4",
                               compress_statistics=True, blocksize=64)
    q.quant_state = st
    class L(torch.nn.Module):
        pass
    m = L(); m.weight = q; m.bias = None
    return nk.nf4_weight(m)[0]
hid, inter, nq, nkv, hd = 5120, 32768, 4096, 1024, 128
W = {"q": lin(64, hid), "k": lin(64, hid), "v": lin(64, hid), "o": lin(64, nq), "gate": lin(64, hid),
     "up": lin(64, hid), "down": lin(64, inter)}
x = torch.randn(hid, device=dev).to(torch.bfloat16)
kc = torch.zeros(8, 8192, hd, device=dev, dtype=torch.bfloat16); vc = torch.zeros_like(kc)
pos = torch.tensor([5], device=dev)
cos = torch.ones(hd, device=dev, dtype=torch.bfloat16); sin = torch.zeros_like(cos)
torch.cuda.synchronize()
t = {}
def first(name, fn):
    a = time.perf_counter(); fn(); torch.cuda.synchronize(); t[name] = round(time.perf_counter() - a, 3)
L = {nm: nk.lane_order_applies(k_, sp[nm][1]) for nm, k_ in (("qkv", hid), ("o", nq), ("down", inter))}
first("gemv q|k|v", lambda: nk.nf4_gemv_launch(x, *nk._flat([W["q"], W["k"], W["v"]]), code, W["q"].code2,
      [64, 64, 64], hid, sp["qkv"][1], sp["qkv"][0], sp["qkv"][2], L["qkv"]))
parts = torch.randn(sp["qkv"][1], (32 + 16) * hd, device=dev)
first("rope + cache", lambda: nk.rope_cache_launch(parts, cos, sin, pos, kc, vc, 32, 8, hd))
q = torch.randn(32 * hd, device=dev).to(torch.bfloat16)
first("attention", lambda: nk.attn_decode_launch(q, kc, vc, pos, 32, hd ** -0.5, L["o"]))
first("gemv o", lambda: nk.nf4_gemv_launch(q, *nk._flat([W["o"]]), code, W["o"].code2, [64], nq, sp["o"][1],
      sp["o"][0], sp["o"][2], L["o"]))
ln = torch.ones(hid, device=dev, dtype=torch.bfloat16)
for s_ in sorted({sp["o"][1], sp["down"][1]}):
    first(f"add + rmsnorm S={s_}", lambda s_=s_: nk.add_rmsnorm_launch(x, torch.randn(s_, hid, device=dev), ln, 1e-5,
                                                                     True))
first("gate_up", lambda: nk.nf4_gate_up_launch(x, *nk._flat([W["gate"], W["up"]]), code, W["gate"].code2, 64, hid,
      sp["gate_up"][0], sp["gate_up"][1], True, False))
act = torch.randn(inter, device=dev).to(torch.bfloat16)
first("gemv down", lambda: nk.nf4_gemv_launch(act, *nk._flat([W["down"]]), code, W["down"].code2, [64], inter,
      sp["down"][1], sp["down"][0], sp["down"][2], L["down"]))
from magistral_kit.model import nf4_cuda as nc
first("CUDA GEMV: NVRTC compile + module load", lambda: nc.load(dev))
print("COLD_JIT " + json.dumps(t))
'''


def cold_jit(splits: Any) -> dict[str, Any]:
    """Seconds of each kit kernel's first call in a fresh process with an empty Triton cache: the JIT cost a
    first chat turn pays on a new machine (the in-process first-call figures run after the cache is warm)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", COLD_JIT, json.dumps(dict(splits.__dict__))], env=env,
                           cwd=str(REPO), capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - t
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("COLD_JIT ")), None)
    if line is None:
        return {"error": (r.stderr or r.stdout)[-600:]}
    per = json.loads(line[len("COLD_JIT "):])
    return {"per_kernel_s": per, "jit_total_s": round(sum(per.values()), 2), "process_wall_s": round(wall, 1)}


def kernel_family(name: str) -> str:
    """The profile's row for a CUDA kernel name: the kit's CUDA GEMVs (nf4_pair.cu), its Triton kernels,
    bitsandbytes' and torch's."""
    low = name.lower()
    return ("CUDA GEMV (nf4_pair.cu)" if low.startswith("nf4_gemv_r") else
            "CUDA gate_up (nf4_pair.cu)" if low.startswith("nf4_gate_up_r") else
            "Triton GEMV" if "_nf4_gemv" in low else "Triton gate_up" if "_nf4_gate_up" in low else
            "attention" if "_attn_" in low else "rope + cache write" if "rope" in low else
            "add + rmsnorm" if "rmsnorm" in low else "gemv_4bit (bnb)" if "gemv" in low or "4bit" in low else
            "lm_head and other matmuls" if any(t in low for t in ("gemm", "cutlass", "nvjet")) else "other")


def profile_step(model: Any, cache: int, steps: int = 16) -> dict[str, Any]:
    """GPU time per decode step by kernel family (torch.profiler over graph replays of the current runner)."""
    from torch.profiler import ProfilerActivity, profile

    from magistral_kit.model import fast_decode as fd

    runner = fd.current_runner(model)
    if runner is None or runner.graph is None:
        return {"error": "no captured runner"}
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            runner.graph.replay()
        torch.cuda.synchronize()
    fam: dict[str, float] = {}
    count: dict[str, int] = {}
    for ev in prof.key_averages():
        name = ev.key
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if not t:
            continue
        f = kernel_family(name)
        fam[f] = fam.get(f, 0.0) + t
        count[f] = count.get(f, 0) + ev.count
    total = sum(fam.values())
    top = sorted(((ev.key[:80], round((getattr(ev, "device_time_total", None) or 0.0) / steps, 1))
                  for ev in prof.key_averages()), key=lambda r: -r[1])[:12]
    by_time = sorted(fam.items(), key=lambda kv: -kv[1])
    return {"cache": cache, "us_per_step": {k: round(v / steps, 1) for k, v in by_time},
            "kernels_per_step": {k: round(v / steps, 1) for k, v in count.items()},
            "kernel_sum_ms": round(total / steps / 1000, 3), "top": top}


def _fmt(v: Any, nd: int = 1) -> str:
    return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def h200_table(result: dict) -> str:
    """README/GPU.md tables (decode paths; NF4 kernels per shape and per layer) from a gpu_chat results JSON."""
    lines = ["| path | kernel | cache | decode tok/s (median of 3) | runs | first call: capture / compile+JIT | "
             "GPU peak | clear-gap argmax agreement |", "|---|---|---|---|---|---|---|---|"]
    for name in ("plain", "graph", "compiled", "graph_sync", "graph_triton", "bnb_graph", "bnb_compiled"):
        for cache in ("8k", "32k", "1k"):
            key = f"{name}_{cache}"
            tps = result.get(f"{key}_decode_tok_per_s")
            if tps is None:
                continue
            first = result.get(f"{key}_first_call", {})
            chk = result.get(f"{key}_check_vs_eager_forward", {})
            kernel = first.get("kernel") or ("bitsandbytes" if name.startswith(("bnb", "plain")) else "?")
            gemv = first.get("gemv", "")
            if gemv:  # which GEMV ran the linears, without the parenthesised reasons
                kernel += ": " + re.sub(r" \([^)]*\)", "", gemv)
            n_ok, n_clear = chk.get("clear_agree", 0), chk.get("clear_steps", 0)
            agree = f"{n_ok}/{n_clear} ({100 * n_ok / n_clear:.0f} %)" if n_clear else "–"
            cap = (f"{first.get('capture_seconds', 0):.2f} s / {first.get('compile_seconds', 0):.1f} s"
                   if first else "–")
            runs = _runs(result.get(f"{key}_decode_tok_per_s_runs", []))
            label = {"plain": "plain `model.generate`", "graph": "fast, CUDA graph",
                     "compiled": "fast, compiled + graph", "bnb_graph": "fast, CUDA graph",
                     "graph_sync": "fast, CUDA graph, each token read before the next step is queued",
                     "graph_triton": "fast, CUDA graph, Triton GEMV for every linear",
                     "bnb_compiled": "fast, compiled + graph"}[name]
            cache_s = ({"8k": "8,192", "32k": "32,768"}[cache] if name != "plain"
                       else f"dynamic ({ {'1k': '1,024', '8k': '8,000'}[cache]}-token prompt)")
            peak = result.get(f"{key}_gpu_peak_gib")
            lines.append(f"| {label} | {kernel} | {cache_s} | **{tps:.1f}** | {runs} | {cap} | "
                         f"{_fmt(peak, 2)}{' GiB' if peak else ''} | {agree} |")
    k = result.get("kernels")
    if k:
        lines += ["", "| linear (out × in) | MB read | bitsandbytes µs | GB/s | kit µs (launch) | GB/s | "
                  "error vs fp32 ref: bnb / kit |", "|---|---|---|---|---|---|---|"]
        for name, r in k["shapes"].items():
            lines.append(f"| {name} {r['n']} × {r['k']} | {r['mbytes']} | {r['bnb_us']:.1f} | {r['bnb_gbs']:.0f} | "
                         f"**{r['ours_us']:.1f}** ({r['best']}) | {r['ours_gbs']:.0f} | "
                         f"{r['err_bnb']:.1e} / {r['err_ours']:.1e} |")
        f1, f2 = k.get("qkv_fused", {}), k.get("gate_up_fused", {})
        sh = k["shapes"]
        if f1 and all(n in sh for n in ("q", "k", "v")):
            mb = sh["q"]["mbytes"] + sh["k"]["mbytes"] + sh["v"]["mbytes"]
            bnb3 = sh["q"]["bnb_us"] + sh["k"]["bnb_us"] + sh["v"]["bnb_us"]
            lines.append(f"| q\\|k\\|v in one launch {sh['q']['n'] + sh['k']['n'] + sh['v']['n']} × {sh['q']['k']} | "
                         f"{mb:.1f} | {bnb3:.1f} (3 launches) | – | "
                         f"**{f1['us']:.1f}** ({f1['best']}) | {mb * 1e3 / f1['us']:.0f} | – |")
        if f2 and all(n in sh for n in ("gate", "up")):
            mb = sh["gate"]["mbytes"] + sh["up"]["mbytes"]
            lines.append(f"| gate\\|up + silu·mul in one launch 2 × {sh['gate']['n']} × {sh['gate']['k']} | "
                         f"{mb:.1f} | "
                         f"{sh['gate']['bnb_us'] + sh['up']['bnb_us']:.1f} (2 launches) | – | "
                         f"**{f2['us']:.1f}** ({f2['best']}) | {mb * 1e3 / f2['us']:.0f} | – |")
        lay = k.get("layer")
        if lay:
            lines.append(f"| **one decoder layer's linears** (measured in sequence, {lay['layers_rotated']} layers "
                         f"rotated) | {lay['mbytes']} | **{lay['bnb_us']:.1f}** | {lay['bnb_gbs']:.0f} | "
                         f"**{lay['ours_us']:.1f}** | {lay['ours_gbs']:.0f} | – |")
    pair = (k or {}).get("pair", {})
    if "layer" in pair:
        lines += ["", "| decode-step launch (out × in) | MB read | Triton GEMV µs | CUDA GEMV µs (rows/warp, "
                  "K splits, blocks/SM) | GB/s | priced with the norm that reads its partial sums: Triton / CUDA | used | "
                  "CUDA error vs fp32 ref |", "|---|---|---|---|---|---|---|---|"]
        shapes = {"qkv": ("q", "k", "v"), "o": ("o",), "gate_up": ("gate", "up"), "down": ("down",)}
        tri_us = {"qkv": k.get("qkv_fused", {}).get("us"), "gate_up": k.get("gate_up_fused", {}).get("us"),
                  "o": k["shapes"]["o"]["ours_us"], "down": k["shapes"]["down"]["ours_us"]}
        for name, parts in shapes.items():
            r = pair[name]
            used = "CUDA" if pair["launch_best"].get(name) is not None else "Triton"
            dims = (f"{sum(k['shapes'][p_]['n'] for p_ in parts)} × {k['shapes'][parts[0]]['k']}"
                    if name != "gate_up" else f"2 × {k['shapes']['gate']['n']} × {k['shapes']['gate']['k']}")
            err = " / ".join(f"{pair['err'][p_]:.1e}" for p_ in parts)
            mb = sum(k["shapes"][p_]["mbytes"] for p_ in parts)
            label = {"qkv": "q\\|k\\|v", "o": "o", "gate_up": "gate\\|up", "down": "down"}[name]
            lines.append(f"| {label} {dims} | {mb:.1f} | {tri_us[name]:.1f} | {r['us']:.1f} "
                         f"({r['best'].replace('_', ', ')}) | {mb * 1e3 / r['us']:.0f} | "
                         f"{r['triton_us_same_pricing']:.1f} / "
                         f"{r['pair_us_same_pricing']:.1f} | **{used}** | {err} |")
        lay = pair["layer"]
        lines.append(f"| **one decoder layer's linears as the decode step runs them** (CUDA for "
                     f"{', '.join(lay['linears_on_cuda'])}; {lay['layers_rotated']} layers rotated) | "
                     f"{k['layer']['mbytes']} | {lay['triton_us']:.1f} (all Triton) | **{lay['us']:.1f}** "
                     f"({lay['all_cuda_us']:.1f} all CUDA) | {lay['gbs']:.0f} | – | – | – |")
    profs = [(label, result[key]) for key, label in (("profile_graph_8k", "kit kernels"),
                                                      ("profile_compiled_8k", "kit kernels, compiled"),
                                                      ("profile_bnb_graph_8k", "bitsandbytes"))
             if isinstance(result.get(key), dict) and "us_per_step" in result[key]]
    if profs:
        fams = list(dict.fromkeys(f for _, p in profs for f in p["us_per_step"]))
        lines += ["", "| decode step, 8k cache (torch.profiler over CUDA-graph replays) | "
                  + " | ".join(f"{label}: GPU µs per token (kernels)" for label, _ in profs) + " |",
                  "|---|" + "---|" * len(profs)]
        for fam in fams:
            cells = [f"{p['us_per_step'][fam]:.0f} ({p['kernels_per_step'].get(fam, 0):.0f})"
                     if fam in p["us_per_step"] else "–" for _, p in profs]
            lines.append(f"| {fam} | " + " | ".join(cells) + " |")
        sums = " | ".join(f"**{p['kernel_sum_ms'] * 1000:.0f}**" for _, p in profs)
        lines.append(f"| **kernel sum** | {sums} |")
        keys = {"kit kernels": "graph", "kit kernels, compiled": "compiled", "bitsandbytes": "bnb_graph"}
        per_tok = [(1e6 / result[f"{keys[label]}_8k_decode_tok_per_s"])
                   if result.get(f"{keys[label]}_8k_decode_tok_per_s") else None for label, _ in profs]
        cells = [f"{t:.0f}" if t else "–" for t in per_tok]
        lines.append("| measured per token (1 / decode rate); the rest is gaps between kernels | "
                     + " | ".join(cells) + " |")
    cold = result.get("cold_jit")
    if isinstance(cold, dict) and "per_kernel_s" in cold:
        parts = ", ".join(f"{k_} {v_:.1f} s" for k_, v_ in cold["per_kernel_s"].items())
        lines += ["", f"First turn on a fresh machine: the kit kernels' first calls (Triton's JIT, and NVRTC for the "
                  f"CUDA GEMV), timed in a fresh process with an empty Triton cache, cost "
                  f"**{cold['jit_total_s']:.1f} s** once ({parts}); the first call's "
                  "capture / compile in the first table ran with the kernels already compiled in the process."]
    fast, plain = result.get("chat_fast_turn_s_median"), result.get("chat_plain_turn_s_median")
    if fast is not None:
        turns = _turns(result, "fast") + _turns(result, "plain")
        problems = sorted({p_ for t_ in turns for p_ in t_.get("problems", [])})
        streamed = all(t_.get("streamed_equals_reply") for t_ in turns)
        lines += ["", f"Chat turns through `open_chat` ({result.get('chat_embedder', 'embedder not recorded')}), "
                  f"{turns[0].get('tokens_out', '?')} new tokens per reply, streamed"
                  f"{' (the streamed text equals the reply in every turn)' if streamed else ' (streamed text DIFFERS)'}"
                  f": fast decode {fast:.2f} s per turn (median, after the first)"
                  + (f" vs plain generate {plain:.2f} s." if plain else ".")
                  + (f" Problems the turns reported: {'; '.join(problems)}." if problems else "")]
    return "\n".join(lines) + "\n"


def probe_table(result: dict) -> str:
    """GPU.md table: the GEMV with x in natural order vs lane order (the decode step's), same launch, from a
    --kernels-only results JSON."""
    k = result.get("kernels", {})
    sh, order = k.get("shapes", {}), k.get("x_order", {})
    lines = ["| linear (out × in) | MB read | launch | x in natural order µs | GB/s | x in lane order µs | GB/s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in order.items():
        if name == "gate_up":
            label, mb = "gate\\|up + silu·mul, one launch", 2 * sh["gate"]["mbytes"] if "gate" in sh else None
        else:
            label, mb = f"{name} {sh[name]['n']} × {sh[name]['k']}", sh[name]["mbytes"]
        if mb is None:
            continue
        nat, lane = r["natural_us"], r["lane_us"]
        lines.append(f"| {label} | {mb:.2f} | {r['launch']} | {nat:.1f} | {mb * 1e3 / nat:.0f} | "
                     f"**{lane:.1f}** | {mb * 1e3 / lane:.0f} |")
    lines += ["", f"{result.get('device', '?')}, triton {result.get('versions', {}).get('triton', '?')}, random "
              "weights of every Magistral linear shape quantized by bitsandbytes, CUDA graphs of calls rotating over "
              "enough copies to defeat the L2, timed inside the kernel comparison of the run above "
              "(`results/gpu_chat_h200.json`, key `kernels.x_order`)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
def main() -> None:
    global OUT_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="fewer/shorter runs (a smoke test)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-chat", action="store_true")
    ap.add_argument("--dry-cpu", action="store_true", help="tiny shape on the CPU, eager loop: checks the script")
    ap.add_argument("--kernels-only", action="store_true",
                    help="only the NF4 kernel comparison, on random weights of every Magistral linear shape")
    ap.add_argument("--fast-only", action="store_true",
                    help="skip the reload / full-hash / plain-generate stages (measured before, unchanged here)")
    ap.add_argument("--no-kernel-bench", action="store_true")
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
    from magistral_kit.model import nf4_kernel as nk

    if args.kernels_only:
        t = time.perf_counter()
        lins = random_linears(scale_bytes=1.2e8 if args.quick else 4e8)
        log("t_random_linears_s", round(time.perf_counter() - t, 1))
        kb = kernel_bench(lins, quick=args.quick)
        log("kernels", kb)
        log("cold_jit", cold_jit(nk.DecodeSplits(**{k_: tuple(v_) for k_, v_ in kb["splits_best"].items()})))
        log("done", True)
        return

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
    if args.fast_only:
        return fast_stages(args, lm.model, cfg, work, runs, new_dec, [])
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

    fast_stages(args, model, cfg, work, runs, new_dec, eos, p1k, p8k)


def timed_decode(model: Any, key: str, p1k: torch.Tensor, new_dec: int, eos: list[int], runs: int, cache: int,
                 compile: bool = False, check: bool = True, expect_path: str | None = None) -> None:
    """One decode configuration: a first call (capture / compile; checked against one eager forward if asked),
    then ``runs`` calls on fresh prompts reusing its runner; logs ``<key>_first_call``,
    ``<key>_check_vs_eager_forward``, ``<key>_decode_tok_per_s_runs`` and ``<key>_decode_tok_per_s``."""
    from magistral_kit.model import fast_decode as fd

    first = fd.fast_generate(model, p1k, max_new_tokens=new_dec, eos_token_ids=eos, cache_steps=(cache,),
                             compile=compile, mode=MODE, return_logits=check)
    log(f"{key}_first_call", first.as_dict())
    if check:
        log(f"{key}_check_vs_eager_forward", check_against_forward(model, p1k, first))
    rs = [fd.fast_generate(model, random_prompt(1024, 10 + i), max_new_tokens=new_dec, eos_token_ids=eos,
                           cache_steps=(cache,), compile=compile, mode=MODE) for i in range(runs)]
    if expect_path is not None:
        assert all(r.reused_runner and r.capture_seconds == 0 and r.path == expect_path for r in rs), \
            [r.as_dict() for r in rs]
    log(f"{key}_decode_tok_per_s_runs", [round(r.decode_tok_per_s, 2) for r in rs])
    log(f"{key}_decode_tok_per_s", med([r.decode_tok_per_s for r in rs], 2))


def fast_stages(args: Any, model: Any, cfg: Any, work: Path, runs: int, new_dec: int, eos: list[int],
                p1k: torch.Tensor | None = None, p8k: torch.Tensor | None = None) -> None:
    """Kernel comparison on the model's own weights, fast decode paths, bitsandbytes reference, profile, chat."""
    from magistral_kit.model import fast_decode as fd
    from magistral_kit.model import nf4_kernel as nk

    p1k = random_prompt(1024, 1) if p1k is None else p1k
    p8k = random_prompt(8000, 2) if p8k is None else p8k
    if DEV == "cuda" and not args.no_kernel_bench:
        try:
            kb = kernel_bench(model_linears(model), quick=args.quick)
            log("kernels", kb)
            nk.DEFAULT_SPLITS = nk.DecodeSplits(**{k_: tuple(v_) for k_, v_ in kb["splits_best"].items()})
            nk.NORM_WARPS = kb["add_rmsnorm"]["warps_best"]
            if "launch_best" in kb.get("pair", {}):
                from magistral_kit.model import nf4_cuda as nc

                nc.DEFAULT_LAUNCH = nc.PairLaunch(**{k_: None if v_ is None else tuple(v_)
                                                     for k_, v_ in kb["pair"]["launch_best"].items()})
            log("cold_jit", cold_jit(nk.DEFAULT_SPLITS))
        except Exception as exc:
            import traceback

            log("kernels_error", f"{type(exc).__name__}: {str(exc)[:300]} | {traceback.format_exc()[-800:]}")
    log("decode_splits_used", dict(nk.DEFAULT_SPLITS.__dict__))
    log("norm_warps_used", nk.NORM_WARPS)
    from magistral_kit.model import nf4_cuda as nc

    log("pair_launch_used", dict(nc.DEFAULT_LAUNCH.__dict__))

    # 5. fast paths ----------------------------------------------------------------------------------------------
    variants = [("graph", False)] + ([] if args.no_compile else [("compiled", True)])
    for name, comp in variants:
        for cache in (8192, 32768):
            key = f"{name}_{cache // 1024}k"
            fd.release_runner(model)
            reset_peak()
            try:
                timed_decode(model, key, p1k, new_dec, eos, runs, cache, comp,
                             expect_path=name if MODE == "graph" else "eager")
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
                if cache == 8192 and DEV == "cuda":
                    log(f"profile_{name}_8k", profile_step(model, cache))
            except Exception as exc:  # record, keep measuring the rest
                import traceback

                log(f"{key}_error", f"{type(exc).__name__}: {str(exc)[:400]} | {traceback.format_exc()[-1200:]}")
    fd.release_runner(model)

    # 5a. the graph path with the host reading each token before it queues the next step (QUEUE_DEPTH 1, the loop
    # before queuing): what keeping a step queued gains, in the same process
    if DEV == "cuda":
        depth, fd.QUEUE_DEPTH = fd.QUEUE_DEPTH, 1
        try:
            timed_decode(model, "graph_sync_8k", p1k, new_dec, eos, runs, 8192, check=False)
        except Exception as exc:
            log("graph_sync_8k_error", f"{type(exc).__name__}: {str(exc)[:400]}")
        finally:
            fd.QUEUE_DEPTH = depth
            fd.release_runner(model)

    # 5a'. the graph path with the Triton GEMV for the linears (MAGISTRAL_KIT_NF4_KERNEL=triton): what the CUDA
    # GEMV gains in the whole decode step, in the same process
    if DEV == "cuda":
        os.environ[nk.ENV_DISABLE] = "triton"
        try:
            fd.release_runner(model)
            timed_decode(model, "graph_triton_8k", p1k, new_dec, eos, runs, 8192, check=False)
        except Exception as exc:
            log("graph_triton_8k_error", f"{type(exc).__name__}: {str(exc)[:400]}")
        finally:
            os.environ.pop(nk.ENV_DISABLE, None)
            fd.release_runner(model)

    # 5b. the same loop with bitsandbytes' kernels (the reference the kit kernels replace) ----------------------
    if DEV == "cuda":
        os.environ[nk.ENV_DISABLE] = "0"
        try:
            fd.release_runner(model)
            reset_peak()
            timed_decode(model, "bnb_graph_8k", p1k, new_dec, eos, runs, 8192)
            log("bnb_graph_8k_gpu_peak_gib", peak())
            log("profile_bnb_graph_8k", profile_step(model, 8192))
        except Exception as exc:
            log("bnb_graph_8k_error", f"{type(exc).__name__}: {str(exc)[:400]}")
        finally:
            os.environ.pop(nk.ENV_DISABLE, None)
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
