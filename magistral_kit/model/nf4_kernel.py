"""Batch-1 NF4 decode kernels in Triton, reading bitsandbytes' own 4-bit weights.

Why we wrote our own: at batch 1 a decode step is a chain of matrix-vector products over 4-bit weights, and
bitsandbytes' fused batch-1 NF4 kernel is the measured limit of this project's decode speed: it reaches a
fraction of the GPU's memory bandwidth, so a faster GPU barely helps (../shared/notes/gpu.md has the figures).
This module decodes the checkpoint exactly as bitsandbytes wrote it (packed NF4, high nibble first; double
quantized absmax, blocksize 64 with 256-block second-level scales) -- nothing is converted or copied -- and
does the rest of a decode step around the linears in a few fused kernels:

* ``gemv``: NF4 matrix-vector product. One warp per program; each lane owns 16 contiguous packed bytes of a
  row (32 weights, half an absmax block) and the program owns ``block_rows`` rows, so each activation load is
  reused for all of them. The tensors are shaped so that Triton keeps the lane as the thread axis: 16-byte
  loads, and the nibbles, values and 32-element sums stay in registers with no layout change through shared
  memory (measured: the layout, not the lookup, was what made an earlier version slow). Nibbles are decoded
  with ``tl.gather`` on the NF4 table (a warp shuffle on the GPU, plain indexing in Triton's interpreter -- no
  inline assembly, so CI runs the same code on the CPU). x arrives in lane order (``lane_order``) from the kernel
  that produced it, so the warp reads it in contiguous 512-byte runs (Nsight Compute: the L1 data pipe, shared by
  the shuffles and the loads, is the unit this loop saturates; bench/nf4_ncu.py).
  Up to three weights sharing one input (q, k, v) run in one launch; a split of K over programs writes float32
  partial sums that the consumer adds (the residual/norm and rotary kernels below do that for free).
* ``gate_up``: gate and up projections in one launch with ``silu(gate) * up`` as the epilogue.
* ``add_rmsnorm``: residual add of a linear's partial sums + RMSNorm, one kernel.
* ``rope_cache``: sums the q|k|v partials, applies the rotary embedding, writes k and v into the static cache.
* ``attn_decode``: split-K decode attention over the *filled* part of the cache only (the position is read on
  the device, so the kernel stays capturable in a CUDA graph and costs what the conversation length costs, not
  the cache size; a fixed number of programs per KV head share those positions), 4 query heads per KV head
  read each K/V row once; a second kernel merges the splits.

On CUDA the decode step runs the large MLP launches (gate|up, down) on the CUDA GEMV of ``nf4_cuda`` instead
of ``gemv`` / ``gate_up`` (two weights per shared-memory table load; bench/gpu_chat.py measured it faster there
and the Triton GEMV faster for q|k|v and o; ``KitDecoder.gemv_note`` says which ran what).

All of them are registered as torch custom ops (``torch.ops.kit_nf4.*``) with fake implementations, so
``torch.compile`` keeps the decode step as one graph. bitsandbytes still loads and quantizes the model and runs
prefill and every case the kernels do not cover; ``prepare_decode`` says why when it declines a model.

Rounding follows the bf16 module path (each linear's output, the residual add, the norm, silu and the product
are rounded to bf16 where transformers rounds them); sums are float32, and the NF4 table is used in float32.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

try:  # the GPU image and the project's pins ship triton 3.6; without it the kit falls back to bitsandbytes
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - reported by prepare_decode
    triton = None
    tl = None

NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)
BLOCK = 64  # bitsandbytes absmax block (elements)
BLOCK2 = 256  # second-level (double quant) block, in absmax entries
STEP = 1024  # elements of one row a program consumes per loop step (32 lanes x 32)
ATTN_CHUNK = 64  # cache positions per inner step of the attention kernel
ATTN_SPLITS = 32  # attention programs per KV head; they share the filled cache positions in whole chunks
NORM_WARPS = 16  # warps of the one-program add + RMSNorm kernel (bench/gpu_chat.py times 4 / 8 / 16)
ENV_DISABLE = "MAGISTRAL_KIT_NF4_KERNEL"  # "0" turns the kernels off (bitsandbytes decodes, reason recorded)


# ==============================================================================================================
# Triton kernels
# ==============================================================================================================
if triton is not None:

    @triton.jit
    def _rn(x):
        """float32 -> the nearest bf16 value (ties to even), still as float32. Written out on the bits because
        Triton's interpreter truncates in ``.to(tl.bfloat16)`` while the GPU rounds; this way both agree."""
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        return b.to(tl.float32, bitcast=True)

    @triton.jit
    def _lane_pos(e):
        """Where element e of a vector sits in lane order (see ``lane_order``)."""
        r = e % 1024
        return e - r + (r % 32 // 8) * 256 + (r // 32) * 8 + r % 8

    @triton.jit
    def _nf4_rows(x_ptr, w_ptr, a_ptr, s2_ptr, off_ptr, code2_ptr, code, row0, N, K, k_lo, k_hi,
                  BR: tl.constexpr, W: tl.constexpr = 1, EVEN: tl.constexpr = False, XL: tl.constexpr = False):
        """float32 dot products of rows [row0, row0 + BR) of one NF4 weight with x over elements [k_lo, k_hi).

        Lane t of a warp owns 16 contiguous packed bytes (32 weights, half an absmax block) of every row per
        1024-element step. Tensors keep the lane as the axis Triton spreads over threads (it is the first axis of
        every load and the last of the decode), so the loads are 16-byte vectors, the nibbles, products and the
        32-element sums stay in each thread's registers, and no layout change goes through shared memory.
        EVEN (rows a multiple of BR, K range a multiple of 1024) drops every mask.
        XL: x is in lane order (the producer stored it so), so each of the four 16-byte loads of x reads 512
        contiguous bytes across the warp; in natural order each lane's 64 bytes are contiguous and every load
        touches twice the sectors (measured: the busiest unit of this loop is the L1 data pipe, which the
        table shuffles and these loads share)."""
        rows = row0 + tl.arange(0, BR)
        rmask = rows < N
        t = tl.arange(0, 32)
        c = tl.arange(0, 4)  # 32-bit word of a lane's 16 bytes
        i = tl.arange(0, 8)  # nibble of a word in element order: element 2b is the high nibble of byte b
        shifts = ((i // 2) * 8 + (1 - i % 2) * 4).to(tl.uint32)
        off = tl.load(off_ptr)
        kw = K // 8
        kb = K // 64
        woff = t[:, None, None] * 4 + tl.multiple_of(rows * kw, 8)[None, :, None] + c[None, None, :]  # [32,BR,4]
        if XL:
            xoff = t[:, None, None] * 8 + c[None, :, None] * 256 + i[None, None, :]  # [32, 4, 8]
        else:
            xoff = t[:, None, None] * 32 + c[None, :, None] * 8 + i[None, None, :]  # [32, 4, 8]
        acc = tl.zeros([32, BR], dtype=tl.float32)
        for k_step in range(k_lo, k_hi, 1024):
            k0 = tl.multiple_of(k_step, 64)
            kw0 = tl.multiple_of(k_step // 8, 8)
            blk = (k0 // 64 + t // 2)[:, None] + (rows * kb)[None, :]  # [32, BR] absmax block of each lane
            if EVEN:
                wv = tl.load(w_ptr + kw0 + woff)
                xv = tl.load(x_ptr + k0 + xoff)
                a = tl.load(a_ptr + blk).to(tl.int32)
                s2 = tl.load(s2_ptr + blk // 256)
            else:
                tmask = k0 + t * 32 < k_hi
                m2 = tmask[:, None] & rmask[None, :]
                wv = tl.load(w_ptr + kw0 + woff, mask=m2[:, :, None], other=0)
                xv = tl.load(x_ptr + k0 + xoff, mask=tmask[:, None, None], other=0.0)
                a = tl.load(a_ptr + blk, mask=m2, other=0).to(tl.int32)
                s2 = tl.load(s2_ptr + blk // 256, mask=m2, other=0.0)
            wv = tl.permute(wv.to(tl.uint32, bitcast=True), (1, 2, 0))  # [BR, 4, 32]
            # the table holds the 16 values twice, so 5 bits index it (one op less than masking 4 bits off)
            nib = ((wv[:, :, None, :] >> shifts[None, None, :, None]) & 31).to(tl.int32)  # [BR, 4, 8, 32]
            if W == 1:
                v = tl.gather(code, tl.reshape(nib, [BR * 1024]), 0)
            else:  # one table per warp: the gather stays a warp shuffle
                v = tl.gather(tl.broadcast_to(code[None, :], [W, 32]), tl.reshape(nib, [W, BR // W * 1024]), 1)
            v = tl.reshape(v, [BR, 4, 8, 32])
            xf = tl.permute(xv, (1, 2, 0)).to(tl.float32)  # [4, 8, 32]
            part = tl.sum(tl.sum(v * xf[None, :, :, :], axis=2), axis=1)  # [BR, 32]: half an absmax block each
            scale = tl.load(code2_ptr + a) * s2 + off
            acc += tl.trans(part) * scale
        return tl.sum(acc, axis=0), rows, rmask

    @triton.jit
    def _nf4_gemv_kernel(x_ptr, out_ptr, code_ptr, code2_ptr,
                         w0, a0, s0, o0, n0, w1, a1, s1, o1, n1, w2, a2, s2, o2, n2,
                         K, K_SPLIT, N_TOTAL, BR: tl.constexpr, NSEG: tl.constexpr, W: tl.constexpr,
                         EVEN: tl.constexpr, XL: tl.constexpr = False):
        """Up to 3 NF4 weights sharing the input x; out[split, row] = partial sum over this program's K range."""
        pid = tl.program_id(0)
        sid = tl.program_id(1)
        code = tl.load(code_ptr + tl.max_contiguous(tl.arange(0, 32), 1))
        k_lo = sid * K_SPLIT
        k_hi = tl.minimum(k_lo + K_SPLIT, K)
        out = out_ptr + sid * N_TOTAL
        nb0 = tl.cdiv(n0, BR)
        if pid < nb0:
            y, rows, rmask = _nf4_rows(x_ptr, w0, a0, s0, o0, code2_ptr, code, pid * BR, n0, K, k_lo, k_hi, BR, W,
                                       EVEN, XL)
            tl.store(out + rows, y, mask=rmask)
        else:
            if NSEG > 1:
                nb1 = tl.cdiv(n1, BR)
                if pid < nb0 + nb1:
                    y, rows, rmask = _nf4_rows(x_ptr, w1, a1, s1, o1, code2_ptr, code, (pid - nb0) * BR, n1, K,
                                               k_lo, k_hi, BR, W, EVEN, XL)
                    tl.store(out + n0 + rows, y, mask=rmask)
                else:
                    if NSEG > 2:
                        y, rows, rmask = _nf4_rows(x_ptr, w2, a2, s2, o2, code2_ptr, code,
                                                   (pid - nb0 - nb1) * BR, n2, K, k_lo, k_hi, BR, W, EVEN, XL)
                        tl.store(out + n0 + n1 + rows, y, mask=rmask)

    @triton.jit
    def _nf4_gate_up_kernel(x_ptr, out_ptr, code_ptr, code2_ptr, wg, ag, sg, og, wu, au, su, ou, N, K,
                            BR: tl.constexpr, W: tl.constexpr, EVEN: tl.constexpr, XL: tl.constexpr = False,
                            OL: tl.constexpr = False):
        """bf16 silu(x @ gate^T) * (x @ up^T), rounded where the bf16 module path rounds; OL: stored in lane order."""
        pid = tl.program_id(0)
        code = tl.load(code_ptr + tl.max_contiguous(tl.arange(0, 32), 1))
        g, rows, rmask = _nf4_rows(x_ptr, wg, ag, sg, og, code2_ptr, code, pid * BR, N, K, 0, K, BR, W, EVEN, XL)
        u, rows, rmask = _nf4_rows(x_ptr, wu, au, su, ou, code2_ptr, code, pid * BR, N, K, 0, K, BR, W, EVEN, XL)
        g = _rn(g)
        act = _rn(g / (1.0 + tl.exp(-g)))
        y = _rn(act * _rn(u))
        if OL:
            rows = _lane_pos(rows)
        tl.store(out_ptr + rows, y.to(tl.bfloat16), mask=rmask)

    @triton.jit
    def _add_rmsnorm_kernel(res_ptr, part_ptr, w_ptr, x_out, h_out, H, eps, S: tl.constexpr, BLOCK_H: tl.constexpr,
                            OL: tl.constexpr = False):
        """h = bf16(res + bf16(sum_s part[s])); x = w * bf16(h * rsqrt(mean(h^2) + eps)); OL: x in lane order.

        S (the producer's K splits) is a constant so the loop unrolls and the S loads are in flight together."""
        d = tl.arange(0, BLOCK_H)
        m = d < H
        h = tl.load(res_ptr + d, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + d, mask=m, other=0.0).to(tl.float32)  # with the other loads: one memory round trip
        lin = tl.zeros([BLOCK_H], dtype=tl.float32)
        for s in tl.static_range(S):
            lin += tl.load(part_ptr + s * H + d, mask=m, other=0.0)
        hf = _rn(h + _rn(lin))
        tl.store(h_out + d, hf.to(tl.bfloat16), mask=m)
        var = tl.sum(hf * hf, axis=0) / H
        y = _rn(hf * (1.0 / tl.sqrt(var + eps)))
        if OL:
            tl.store(x_out + _lane_pos(d), _rn(w * y).to(tl.bfloat16), mask=m)
        else:
            tl.store(x_out + d, _rn(w * y).to(tl.bfloat16), mask=m)

    @triton.jit
    def _rope_cache_kernel(part_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, q_out, L, S: tl.constexpr,
                           NH: tl.constexpr, NKV: tl.constexpr, D: tl.constexpr):
        """Program h < NH: rotate query head h into q_out; NH <= h < NH + NKV: rotate key head, write k and v."""
        h = tl.program_id(0)
        d = tl.arange(0, D)
        half: tl.constexpr = D // 2
        pd = (d + half) % D
        sign = tl.where(d < half, -1.0, 1.0)
        NTOT: tl.constexpr = (NH + 2 * NKV) * D
        pos = tl.load(pos_ptr)
        cos = tl.load(cos_ptr + d).to(tl.float32)
        sin = tl.load(sin_ptr + d).to(tl.float32)
        x = tl.zeros([D], dtype=tl.float32)
        xp = tl.zeros([D], dtype=tl.float32)
        for s in tl.static_range(S):
            x += tl.load(part_ptr + s * NTOT + h * D + d)
            xp += tl.load(part_ptr + s * NTOT + h * D + pd)
        x = _rn(x)
        xp = _rn(xp)
        a = _rn(x * cos)
        b = _rn(sign * xp * sin)
        r = _rn(a + b).to(tl.bfloat16)
        if h < NH:
            tl.store(q_out + h * D + d, r)
        else:
            kvh = h - NH
            tl.store(kc_ptr + (kvh * L + pos) * D + d, r)
            v = tl.zeros([D], dtype=tl.float32)
            for s in tl.static_range(S):
                v += tl.load(part_ptr + s * NTOT + (NH + NKV + kvh) * D + d)
            tl.store(vc_ptr + (kvh * L + pos) * D + d, _rn(v).to(tl.bfloat16))

    @triton.jit
    def _attn_split_kernel(q_ptr, kc_ptr, vc_ptr, pos_ptr, m_out, l_out, acc_out, L, NSPLIT, scale,
                           G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, CH: tl.constexpr):
        """Attention of the G query heads of KV head ``kvh`` over one split of the filled positions (<= pos).

        The NSPLIT programs of a head share the filled positions (read on the device) in whole chunks, so a short
        conversation is spread over as many programs as a long one instead of leaving most of them idle."""
        kvh = tl.program_id(0)
        sp = tl.program_id(1)
        pos = tl.load(pos_ptr)
        per = tl.cdiv(tl.cdiv(pos + 1, NSPLIT), CH) * CH
        start = sp * per
        if start <= pos:
            g = tl.arange(0, GP)
            d = tl.arange(0, D)
            q = tl.load(q_ptr + (kvh * G + g[:, None]) * D + d[None, :], mask=(g < G)[:, None],
                        other=0.0).to(tl.float32)
            m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([GP], dtype=tl.float32)
            acc = tl.zeros([GP, D], dtype=tl.float32)
            base = kvh * L * D
            for c in range(start, start + per, CH):
                p = c + tl.arange(0, CH)
                valid = p <= pos
                k = tl.load(kc_ptr + base + p[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
                v = tl.load(vc_ptr + base + p[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)  # with k
                # float32 operands holding bf16 values: exact in tf32, and Triton's interpreter (numpy, no bf16
                # matmul) computes the same products
                s = tl.dot(q, tl.trans(k.to(tl.float32))) * scale  # [GP, CH]
                s = tl.where(valid[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                alpha = tl.exp(m_i - m_new)
                pr = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(pr, axis=1)
                acc = acc * alpha[:, None] + tl.dot(_rn(pr), v.to(tl.float32))
                m_i = m_new
            row = kvh * NSPLIT + sp
            gm = g < G
            tl.store(m_out + row * G + g, m_i, mask=gm)
            tl.store(l_out + row * G + g, l_i, mask=gm)
            tl.store(acc_out + (row * G + g[:, None]) * D + d[None, :], acc, mask=gm[:, None])

    @triton.jit
    def _attn_merge_kernel(m_ptr, l_ptr, acc_ptr, pos_ptr, out_ptr, NSPLIT, G: tl.constexpr, D: tl.constexpr,
                           CH: tl.constexpr, BS: tl.constexpr, OL: tl.constexpr = False):
        """out[head] = merge of the used splits' (max, sum, acc) of that head (flash-decoding reduction);
        OL: out in lane order."""
        h = tl.program_id(0)
        kvh = h // G
        g = h % G
        pos = tl.load(pos_ptr)
        used = tl.cdiv(pos + 1, tl.cdiv(tl.cdiv(pos + 1, NSPLIT), CH) * CH)
        d = tl.arange(0, D)
        m_run = float("-inf")
        l_run = 0.0
        acc = tl.zeros([D], dtype=tl.float32)
        for s0 in range(0, NSPLIT, BS):
            s = s0 + tl.arange(0, BS)
            ok = s < used
            row = (kvh * NSPLIT + s) * G + g
            m = tl.load(m_ptr + row, mask=ok, other=float("-inf"))
            l = tl.load(l_ptr + row, mask=ok, other=0.0)
            a = tl.load(acc_ptr + row[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
            m_new = tl.maximum(m_run, tl.max(m, axis=0))
            w = tl.where(ok, tl.exp(m - m_new), 0.0)
            alpha = tl.exp(m_run - m_new)
            l_run = l_run * alpha + tl.sum(w * l, axis=0)
            acc = acc * alpha + tl.sum(w[:, None] * a, axis=0)
            m_run = m_new
        e = h * D + d
        if OL:
            e = _lane_pos(e)
        tl.store(out_ptr + e, _rn(acc / l_run).to(tl.bfloat16))


def _need_triton() -> None:
    if triton is None:
        raise RuntimeError("triton is not installed (pip install triton==3.6.0)")


# ==============================================================================================================
# launchers (plain functions) and their custom-op wrappers
# ==============================================================================================================
def _code_table(device: torch.device) -> torch.Tensor:
    """The 16 NF4 values twice over (32 entries: one per lane of a warp), float32."""
    return torch.tensor(NF4_CODE * 2, dtype=torch.float32, device=device)


def lane_order(x: torch.Tensor) -> torch.Tensor:
    """x (length a multiple of 1024) in the order the GEMV's lanes read it: within each 1024-element step, the
    32 elements lane t multiplies (t*32 .. t*32+31) are spread as 4 runs of 8 at t*8 + c*256, so that each of the
    lane's four 16-byte loads is one 512-byte contiguous read of the whole warp. The decode step's producers
    (add + RMSNorm, attention, gate|up) store their outputs this way when the consumer reads whole steps."""
    _whole_steps(x.numel())
    return x.reshape(-1, 32, 4, 8).transpose(1, 2).reshape(-1)


def natural_order(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``lane_order``: x back in natural order (the references and natural-order launches)."""
    _whole_steps(x.numel())
    return x.reshape(-1, 4, 32, 8).transpose(1, 2).reshape(-1)


def _whole_steps(*lengths: int) -> None:
    """Lane order is defined per 1024-element step: refuse a vector that is not whole steps, saying which."""
    if any(n % STEP for n in lengths):
        raise ValueError(f"lane order needs each length to be a multiple of {STEP}, got "
                         f"{', '.join(map(str, lengths))}")


def lane_order_applies(k: int, split: int) -> bool:
    """True when every K split of a length-k product covers whole 1024-element steps (lane order applies)."""
    return k % STEP == 0 and _k_split(k, split) % STEP == 0


def nf4_gemv_launch(x: torch.Tensor, weights: Sequence[torch.Tensor], absmax: Sequence[torch.Tensor],
                    absmax2: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor], code: torch.Tensor,
                    code2: torch.Tensor, rows: Sequence[int], k: int, split: int = 1,
                    block_rows: int = 8, warps: int = 1, lane_x: bool = False) -> torch.Tensor:
    """float32 partial sums ``[split, sum(rows)]`` of ``x @ W_i^T`` for up to 3 NF4 weights (concatenated).
    ``lane_x``: x is in lane order (``lane_order``), which needs whole 1024-element steps per split."""
    _need_triton()
    n_seg = len(weights)
    if not 1 <= n_seg <= 3:
        raise ValueError("1 to 3 weights per launch")
    n_total = int(sum(rows))
    k_split = _k_split(k, split)
    split = -(-k // k_split)
    if lane_x and not lane_order_applies(k, split):
        raise ValueError(f"x in lane order needs K splits of whole {STEP}-element steps (K {k}, {split} splits)")
    out = torch.empty((split, n_total), dtype=torch.float32, device=x.device)
    segs: list[Any] = []
    for i in range(3):
        j = min(i, n_seg - 1)
        segs += [weights[j], absmax[j], absmax2[j], offsets[j], int(rows[j]) if i < n_seg else 0]
    nb = sum(-(-int(r) // block_rows) for r in rows)
    even = k % STEP == 0 and k_split % STEP == 0 and all(int(r) % block_rows == 0 for r in rows)
    _nf4_gemv_kernel[(nb, split)](x, out, code, code2, *segs, k, k_split, n_total, BR=block_rows, NSEG=n_seg,
                                  W=warps, EVEN=even, XL=lane_x, num_warps=warps)
    return out


def _k_split(k: int, split: int) -> int:
    """Elements of K per split: whole 1024-element steps where possible, else whole 64-element blocks."""
    split = max(1, min(int(split), -(-k // BLOCK)))
    per = -(-k // split)
    unit = STEP if per >= STEP else BLOCK
    return -(-per // unit) * unit


def nf4_gate_up_launch(x: torch.Tensor, weights: Sequence[torch.Tensor], absmax: Sequence[torch.Tensor],
                       absmax2: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor], code: torch.Tensor,
                       code2: torch.Tensor, n: int, k: int, block_rows: int = 8, warps: int = 1,
                       lane_x: bool = False, lane_out: bool = False) -> torch.Tensor:
    """bf16 silu(x @ gate^T) * (x @ up^T); ``lane_x`` / ``lane_out``: x is / the output is stored in lane order."""
    _need_triton()
    _whole_steps(*([k] if lane_x else []), *([n] if lane_out else []))
    out = torch.empty((n,), dtype=torch.bfloat16, device=x.device)
    even = n % block_rows == 0 and k % STEP == 0
    _nf4_gate_up_kernel[(-(-n // block_rows),)](x, out, code, code2, weights[0], absmax[0], absmax2[0], offsets[0],
                                                weights[1], absmax[1], absmax2[1], offsets[1], n, k,
                                                BR=block_rows, W=warps, EVEN=even, XL=lane_x, OL=lane_out,
                                                num_warps=warps)
    return out


def add_rmsnorm_launch(res: torch.Tensor, parts: torch.Tensor | None, weight: torch.Tensor,
                       eps: float, lane_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, h): h = res + the summed partials, x = RMSNorm(h) (in lane order with ``lane_out``)."""
    _need_triton()
    h_dim = res.numel()
    if lane_out:
        _whole_steps(h_dim)
    x = torch.empty_like(res)
    h = torch.empty_like(res)
    s = 0 if parts is None else parts.shape[0]
    _add_rmsnorm_kernel[(1,)](res, parts if parts is not None else res, weight, x, h, h_dim, float(eps), S=s,
                              BLOCK_H=triton.next_power_of_2(h_dim), OL=lane_out,
                              num_warps=NORM_WARPS if h_dim >= 2048 else 4)
    return x, h


def rope_cache_launch(parts: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, n_heads: int, n_kv: int,
                      head_dim: int) -> torch.Tensor:
    _need_triton()
    q = torch.empty((n_heads * head_dim,), dtype=torch.bfloat16, device=parts.device)
    _rope_cache_kernel[(n_heads + n_kv,)](parts, cos, sin, pos, k_cache, v_cache, q, k_cache.shape[-2],
                                          S=parts.shape[0], NH=n_heads, NKV=n_kv, D=head_dim, num_warps=1)
    return q


def attn_decode_launch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                       n_heads: int, scale: float, lane_out: bool = False) -> torch.Tensor:
    """Attention of one query token over the filled cache; ``lane_out``: the output in lane order."""
    _need_triton()
    n_kv, length, d = k_cache.shape[-3], k_cache.shape[-2], k_cache.shape[-1]
    g = n_heads // n_kv
    if lane_out:
        _whole_steps(n_heads * d)
    n_split = max(1, min(ATTN_SPLITS, -(-length // ATTN_CHUNK)))
    dev = q.device
    m = torch.empty((n_kv * n_split * g,), dtype=torch.float32, device=dev)
    l_ = torch.empty_like(m)
    acc = torch.empty((n_kv * n_split * g, d), dtype=torch.float32, device=dev)
    _attn_split_kernel[(n_kv, n_split)](q, k_cache, v_cache, pos, m, l_, acc, length, n_split, float(scale),
                                        G=g, GP=max(16, triton.next_power_of_2(g)), D=d, CH=ATTN_CHUNK,
                                        num_warps=4)
    out = torch.empty((n_heads * d,), dtype=torch.bfloat16, device=dev)
    _attn_merge_kernel[(n_heads,)](m, l_, acc, pos, out, n_split, G=g, D=d, CH=ATTN_CHUNK,
                                   BS=min(64, triton.next_power_of_2(n_split)), OL=lane_out, num_warps=1)
    return out


_OPS_READY = False


def _register_ops() -> None:
    """Register the launchers as torch custom ops (``torch.ops.kit_nf4``) with shape-only fake versions."""
    global _OPS_READY
    if _OPS_READY:
        return
    from torch.library import custom_op

    @custom_op("kit_nf4::gemv", mutates_args=())
    def gemv(x: torch.Tensor, weights: list[torch.Tensor], absmax: list[torch.Tensor],
             absmax2: list[torch.Tensor], offsets: list[torch.Tensor], code: torch.Tensor, code2: torch.Tensor,
             rows: list[int], k: int, split: int, block_rows: int, warps: int, lane_x: bool = False) -> torch.Tensor:
        return nf4_gemv_launch(x, weights, absmax, absmax2, offsets, code, code2, rows, k, split, block_rows, warps,
                               lane_x)

    @gemv.register_fake
    def _(x, weights, absmax, absmax2, offsets, code, code2, rows, k, split, block_rows, warps, lane_x=False):
        n_split = -(-k // _k_split(k, split))
        return x.new_empty((n_split, int(sum(rows))), dtype=torch.float32)

    @custom_op("kit_nf4::gate_up", mutates_args=())
    def gate_up(x: torch.Tensor, weights: list[torch.Tensor], absmax: list[torch.Tensor],
                absmax2: list[torch.Tensor], offsets: list[torch.Tensor], code: torch.Tensor, code2: torch.Tensor,
                n: int, k: int, block_rows: int, warps: int, lane_x: bool = False,
                lane_out: bool = False) -> torch.Tensor:
        return nf4_gate_up_launch(x, weights, absmax, absmax2, offsets, code, code2, n, k, block_rows, warps, lane_x,
                                  lane_out)

    @gate_up.register_fake
    def _(x, weights, absmax, absmax2, offsets, code, code2, n, k, block_rows, warps, lane_x=False, lane_out=False):
        return x.new_empty((n,), dtype=torch.bfloat16)

    @custom_op("kit_nf4::add_rmsnorm", mutates_args=())
    def add_rmsnorm(res: torch.Tensor, parts: torch.Tensor | None, weight: torch.Tensor,
                    eps: float, lane_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rmsnorm_launch(res, parts, weight, eps, lane_out)

    @add_rmsnorm.register_fake
    def _(res, parts, weight, eps, lane_out=False):
        return torch.empty_like(res), torch.empty_like(res)

    @custom_op("kit_nf4::rope_cache", mutates_args=("k_cache", "v_cache"))
    def rope_cache(parts: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, n_heads: int, n_kv: int,
                   head_dim: int) -> torch.Tensor:
        return rope_cache_launch(parts, cos, sin, pos, k_cache, v_cache, n_heads, n_kv, head_dim)

    @rope_cache.register_fake
    def _(parts, cos, sin, pos, k_cache, v_cache, n_heads, n_kv, head_dim):
        return parts.new_empty((n_heads * head_dim,), dtype=torch.bfloat16)

    @custom_op("kit_nf4::attn_decode", mutates_args=())
    def attn_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                    n_heads: int, scale: float, lane_out: bool = False) -> torch.Tensor:
        return attn_decode_launch(q, k_cache, v_cache, pos, n_heads, scale, lane_out)

    @attn_decode.register_fake
    def _(q, k_cache, v_cache, pos, n_heads, scale, lane_out=False):
        return torch.empty_like(q)

    _OPS_READY = True


# ==============================================================================================================
# bitsandbytes weights -> kernel arguments
# ==============================================================================================================
@dataclass
class NF4Weight:
    """The tensors of one bitsandbytes NF4 linear that the kernels read (views, no copies)."""

    words: torch.Tensor  # packed NF4 as int32 (8 weights per word), flat
    absmax: torch.Tensor  # uint8, one per 64 weights
    absmax2: torch.Tensor  # float32, one per 256 absmax entries
    offset: torch.Tensor  # float32 scalar (0-d)
    code2: torch.Tensor  # float32 [256], the dynamic map of the absmax
    n: int
    k: int


def nf4_weight(linear: torch.nn.Module) -> tuple[NF4Weight | None, str]:
    """The kernel's view of a bitsandbytes ``Linear4bit``, or (None, why it cannot be used)."""
    w = getattr(linear, "weight", None)
    qs = getattr(w, "quant_state", None)
    if qs is None:
        return None, f"{type(linear).__name__} has no bitsandbytes 4-bit quant_state"
    if getattr(linear, "bias", None) is not None:
        return None, "linear has a bias"
    if getattr(qs, "packing_format_for_cpu", False):
        return None, "bitsandbytes repacked this weight for its CPU kernel"
    if qs.quant_type != "nf4":
        return None, f"quant type {qs.quant_type} (kernel reads nf4)"
    if qs.blocksize != BLOCK:
        return None, f"blocksize {qs.blocksize} (kernel reads {BLOCK})"
    if not qs.nested or qs.state2 is None or qs.state2.blocksize != BLOCK2:
        return None, "absmax is not double-quantized with blocksize 256"
    n, k = int(qs.shape[0]), int(qs.shape[1])
    if k % BLOCK:
        return None, f"in_features {k} is not a multiple of {BLOCK}"
    if w.dtype != torch.uint8 or w.numel() * 2 != n * k or not w.is_contiguous():
        return None, "packed weight is not a contiguous uint8 tensor of n*k/2 bytes"
    code = qs.code.detach().float().cpu()
    if code.numel() != 16 or not torch.allclose(code, torch.tensor(NF4_CODE), atol=1e-6):
        return None, "NF4 code table differs from bitsandbytes' standard one"
    if qs.absmax.dtype != torch.uint8 or qs.state2.absmax.dtype != torch.float32:
        return None, "absmax dtypes are not uint8 / float32"
    words = w.detach().reshape(-1).view(torch.int32)
    offset = qs.offset if torch.is_tensor(qs.offset) else torch.tensor(float(qs.offset))
    return NF4Weight(words, qs.absmax.reshape(-1), qs.state2.absmax.reshape(-1).float(),
                     offset.to(device=w.device, dtype=torch.float32).reshape(()),
                     qs.state2.code.to(device=w.device, dtype=torch.float32), n, k), ""


def _flat(ws: Sequence[NF4Weight]) -> tuple[list, list, list, list]:
    return [w.words for w in ws], [w.absmax for w in ws], [w.absmax2 for w in ws], [w.offset for w in ws]


def _ops() -> Any:
    _register_ops()
    return torch.ops.kit_nf4


def nf4_linear(x: torch.Tensor, ws: Sequence[NF4Weight], code: torch.Tensor, split: int = 1,
               block_rows: int = 4, warps: int = 1) -> torch.Tensor:
    """bf16 ``x @ [W_0; W_1; W_2]^T`` for a bf16 vector x of length k (the custom op + the sum over splits)."""
    parts = _ops().gemv(x.reshape(-1).contiguous(), *_flat(ws), code, ws[0].code2, [w.n for w in ws], ws[0].k,
                        split, block_rows, warps)
    return parts.sum(0).to(torch.bfloat16)


# ==============================================================================================================
# the whole decode step (q_len 1) of a Mistral/Llama decoder built from bitsandbytes NF4 linears
# ==============================================================================================================
@dataclass
class _Layer:
    qkv: list[NF4Weight]
    o: NF4Weight
    gate: NF4Weight
    up: NF4Weight
    down: NF4Weight
    ln1: torch.Tensor
    ln2: torch.Tensor


@dataclass
class DecodeSplits:
    """Launch shape per linear: (rows per program, K splits, warps per program); gate_up: (rows, warps).
    bench/gpu_chat.py sweeps these on the GPU and records the best; the defaults are its choice for the
    Magistral shape on the H200."""

    qkv: tuple[int, int, int] = (4, 2, 1)
    o: tuple[int, int, int] = (4, 2, 1)
    gate_up: tuple[int, int] = (4, 1)
    down: tuple[int, int, int] = (4, 8, 1)
    other: tuple[int, int, int] = (8, 5, 1)  # any other linear (the per-linear mode)


DEFAULT_SPLITS = DecodeSplits()


@dataclass
class KitDecoder:
    """A model's decode step through the kit kernels; ``step(ids, pos, cache)`` returns float32 logits [1, V]."""

    model: torch.nn.Module
    layers: list[_Layer]
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    code: torch.Tensor
    splits: DecodeSplits = field(default_factory=lambda: DEFAULT_SPLITS)
    lane_order: bool = True  # producers store x in lane order where the consumer reads whole steps
    pair: Any = None  # nf4_cuda's kernels (CUDA C++ GEMVs) when they cover this model, else the Triton GEMVs run
    pair_launch: Any = None  # nf4_cuda.PairLaunch for them
    gemv_note: str = "Triton GEMV"  # which GEMV runs the linears, and why (shown in the decode diagnostics)

    def on_cuda_gemv(self, name: str) -> bool:
        """Whether linear ``name`` (qkv, o, gate_up, down) runs on nf4_cuda's GEMV (its launch shape is not None)."""
        return self.pair is not None and getattr(self.pair_launch, name) is not None

    def lanes(self) -> dict[str, bool]:
        """Which GEMV inputs travel in lane order (``lane_order``) with the current launch shapes (always, for a
        linear on the CUDA GEMV: prepare_decode checked that its K splits are whole steps)."""
        lay, sp = self.layers[0], self.splits
        triton_lanes = {"qkv": lane_order_applies(lay.qkv[0].k, sp.qkv[1]),
                        "o": lane_order_applies(lay.o.k, sp.o[1]),
                        "gate_up": lane_order_applies(lay.gate.k, 1),
                        "down": lane_order_applies(lay.down.k, sp.down[1])}
        return {name: self.on_cuda_gemv(name) or (self.lane_order and ok) for name, ok in triton_lanes.items()}

    def _gemv(self, ops: Any, name: str, x: torch.Tensor, ws: list[NF4Weight], lane: bool) -> torch.Tensor:
        """float32 partial sums of one of the step's GEMVs (q|k|v, o, down), on the CUDA or the Triton GEMV."""
        if self.on_cuda_gemv(name):
            rows, split, per_sm = getattr(self.pair_launch, name)
            return ops.pair_gemv(x, *_flat(ws), ws[0].code2, [w.n for w in ws], ws[0].k, split, rows, per_sm)
        rows, split, warps = getattr(self.splits, name)
        return ops.gemv(x, *_flat(ws), self.code, ws[0].code2, [w.n for w in ws], ws[0].k, split, rows, warps, lane)

    def _gate_up(self, ops: Any, x: torch.Tensor, lay: _Layer, lane: dict[str, bool]) -> torch.Tensor:
        if self.on_cuda_gemv("gate_up"):
            rows, per_sm = self.pair_launch.gate_up
            return ops.pair_gate_up(x, *_flat([lay.gate, lay.up]), lay.gate.code2, lay.gate.n, lay.gate.k, rows,
                                    per_sm, lane["down"])
        rows, warps = self.splits.gate_up
        return ops.gate_up(x, *_flat([lay.gate, lay.up]), self.code, lay.gate.code2, lay.gate.n, lay.gate.k, rows,
                           warps, lane["gate_up"], lane["down"])

    def step(self, ids: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        ops = _ops()
        base = self.model.model
        emb = base.embed_tokens(ids.view(1, 1))  # [1, 1, H] bf16
        cos, sin = base.rotary_emb(emb, pos.view(1, 1))
        cos, sin = cos.reshape(-1), sin.reshape(-1)
        res = emb.reshape(-1)
        parts: torch.Tensor | None = None
        scale = self.head_dim ** -0.5
        lane = self.lanes()
        for i, lay in enumerate(self.layers):
            kc, vc = cache.layers[i].keys, cache.layers[i].values
            x, res = ops.add_rmsnorm(res, parts, lay.ln1, self.eps, lane["qkv"])
            qkv = self._gemv(ops, "qkv", x, lay.qkv, lane["qkv"])
            q = ops.rope_cache(qkv, cos, sin, pos, kc, vc, self.n_heads, self.n_kv, self.head_dim)
            att = ops.attn_decode(q, kc, vc, pos, self.n_heads, scale, lane["o"])
            parts = self._gemv(ops, "o", att, [lay.o], lane["o"])
            x, res = ops.add_rmsnorm(res, parts, lay.ln2, self.eps, lane["gate_up"])
            act = self._gate_up(ops, x, lay, lane)
            parts = self._gemv(ops, "down", act, [lay.down], lane["down"])
        x, res = ops.add_rmsnorm(res, parts, base.norm.weight, self.eps)
        logits = self.model.lm_head(x.view(1, 1, -1))
        return logits[:, -1, :].float()


@dataclass
class LinearsDecoder:
    """The model's own (transformers) decode step with each bitsandbytes NF4 linear swapped for the kit's
    matrix-vector kernel while the step runs (``MAGISTRAL_KIT_NF4_KERNEL=linears``; the fused step is the
    default)."""

    model: torch.nn.Module
    linears: list[tuple[torch.nn.Module, NF4Weight]]
    code: torch.Tensor
    splits: DecodeSplits = field(default_factory=lambda: DEFAULT_SPLITS)

    def _forward(self, w: NF4Weight, original: Any) -> Any:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.numel() != w.k or x.dtype != torch.bfloat16:
                return original(x)  # not a single bf16 token: bitsandbytes
            br, split, warps = self.splits.other
            parts = _ops().gemv(x.reshape(-1), *_flat([w]), self.code, w.code2, [w.n], w.k, split, br, warps)
            return parts.sum(0).to(torch.bfloat16).view(*x.shape[:-1], w.n)
        return forward

    def step(self, ids: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        for mod, w in self.linears:
            mod.forward = self._forward(w, type(mod).forward.__get__(mod))
        try:
            out = self.model(input_ids=ids, position_ids=pos.view(1, 1), cache_position=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        finally:
            for mod, _ in self.linears:
                del mod.forward
        return out.logits[:, -1, :].float()


def disabled_reason() -> str:
    """Why the kernels are off for this process ('' when they may be used)."""
    if os.environ.get(ENV_DISABLE, "1").strip().lower() in ("0", "false", "off", "no"):
        return f"{ENV_DISABLE}={os.environ[ENV_DISABLE]}"
    if triton is None:
        return "triton is not installed"
    return ""


def prepare_decode(model: torch.nn.Module, allow_cpu: bool = False) -> tuple[KitDecoder | None, str]:
    """A `KitDecoder` for ``model`` if every decoder linear is a supported bitsandbytes NF4 layer, else
    (None, the first reason it is not). Nothing is copied: the decoder holds views of bitsandbytes' tensors."""
    why = disabled_reason()
    if why:
        return None, why
    cfg = getattr(model, "config", None)
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if cfg is None or layers is None or not len(layers):
        return None, "not a decoder model with model.layers"
    dev = next(model.parameters()).device
    if dev.type != "cuda" and not allow_cpu:
        return None, f"the NF4 kernels run on CUDA (model is on {dev.type})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return None, f"activation {cfg.hidden_act} (kernel fuses silu)"
    if getattr(cfg, "rope_scaling", None):
        return None, "rope scaling is not supported by the fused decode step"
    n_heads, n_kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    if head_dim & (head_dim - 1) or head_dim < 16 or n_heads % n_kv:
        return None, f"head_dim {head_dim} / heads {n_heads}:{n_kv} not supported"
    if getattr(model.lm_head, "weight", None) is None or model.lm_head.weight.dtype != torch.bfloat16:
        return None, "lm_head is not a bf16 linear"
    out: list[_Layer] = []
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        ws = {}
        for name, mod in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj), ("o", attn.o_proj),
                          ("gate", mlp.gate_proj), ("up", mlp.up_proj), ("down", mlp.down_proj)):
            w, why = nf4_weight(mod)
            if w is None:
                return None, f"layer {i} {name}_proj: {why}"
            ws[name] = w
        if ws["gate"].k != ws["up"].k or ws["gate"].n != ws["up"].n or ws["down"].k != ws["gate"].n:
            return None, f"layer {i}: MLP shapes do not chain"
        if (ws["q"].n != n_heads * head_dim or ws["k"].n != n_kv * head_dim or ws["v"].n != n_kv * head_dim
                or ws["o"].k != ws["q"].n or not ws["q"].k == ws["k"].k == ws["v"].k == ws["gate"].k):
            return None, f"layer {i}: q/k/v shapes do not match the config"
        code2 = ws["q"].code2
        if any(not torch.equal(w.code2, code2) for w in ws.values()):
            return None, f"layer {i}: absmax code tables differ between linears"
        ln1, ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        if ln1.dtype != torch.bfloat16 or ln2.dtype != torch.bfloat16:
            return None, "norm weights are not bf16"
        out.append(_Layer([ws["q"], ws["k"], ws["v"]], ws["o"], ws["gate"], ws["up"], ws["down"], ln1, ln2))
    eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
    _register_ops()
    if os.environ.get(ENV_DISABLE, "").strip().lower() == "linears":
        lins = []
        for lay, layer in zip(out, layers):
            a_, m_ = layer.self_attn, layer.mlp
            lins += [(a_.q_proj, lay.qkv[0]), (a_.k_proj, lay.qkv[1]), (a_.v_proj, lay.qkv[2]), (a_.o_proj, lay.o),
                     (m_.gate_proj, lay.gate), (m_.up_proj, lay.up), (m_.down_proj, lay.down)]
        return LinearsDecoder(model, lins, _code_table(dev)), ""
    dec = KitDecoder(model, out, n_heads, n_kv, head_dim, eps, _code_table(dev))
    dec.pair, dec.pair_launch, dec.gemv_note = _pair_kernels(out[0], dev)
    return dec, ""


def _pair_kernels(lay: _Layer, dev: torch.device) -> tuple[Any, Any, str]:
    """nf4_cuda's GEMVs for this model's decode step (kernels, launch shapes, note), or (None, None, why the
    Triton GEMVs run instead). ``MAGISTRAL_KIT_NF4_KERNEL=triton`` asks for the Triton ones."""
    from magistral_kit.model import nf4_cuda

    if os.environ.get(ENV_DISABLE, "").strip().lower() == "triton":
        return None, None, f"Triton GEMV ({ENV_DISABLE}=triton)"
    launch, declined = nf4_cuda.DEFAULT_LAUNCH, []
    in_features = {"qkv": lay.qkv[0].k, "o": lay.o.k, "gate_up": lay.gate.k, "down": lay.down.k}
    for name, k in in_features.items():
        spec = getattr(launch, name)
        if spec is None:
            continue
        why = nf4_cuda.supports(k, 1 if name == "gate_up" else spec[1])
        if name == "gate_up" and lay.gate.n % STEP:
            why = f"{lay.gate.n} outputs are not whole {STEP}-element steps"
        if why:
            launch = replace(launch, **{name: None})
            declined.append(f"{name}: {why}")
    used = [name for name in in_features if getattr(launch, name) is not None]
    if not used:
        return None, None, "Triton GEMV" + (f" (CUDA GEMV does not cover {'; '.join(declined)})" if declined else "")
    kernels, why = nf4_cuda.load(dev)
    if kernels is None:
        return None, None, f"Triton GEMV ({why})"
    note = f"CUDA GEMV ({nf4_cuda.SOURCE.name}) for {', '.join(used)}"
    rest = [name for name in in_features if name not in used]
    if rest:
        note += f"; Triton GEMV for {', '.join(rest)}" + (f" ({'; '.join(declined)})" if declined else
                                                           " (faster there in the recorded run)")
    return kernels, launch, note
