"""Probe: can an NF4 GEMV that decodes two weights per shared-memory load beat the kit's Triton GEMV?

Why: the Triton GEMV (magistral_kit/model/nf4_kernel.py) is bound by the L1 data pipe, mostly its one shuffle per
weight (bench/nf4_ncu.py), and Triton cannot lay out a shared-memory table. ``nf4_pair_probe.cu`` (CUDA C++, its
header says how it works) does. This script compiles it with the machine's nvcc for sm_90, launches it through
the CUDA driver API (ctypes; no build system, nothing added to the kit), checks it against
``dequantize_4bit(W).float() @ x.float()``, and times it against the Triton GEMV on the same weights: CUDA graphs
of 64 calls rotating over 6 copies of the shape (more than the L2 holds), as bench/gpu_chat.py times kernels.
Launch shapes: rows per warp x blocks per SM (256-thread blocks, 64 KB of table each).

Not product code: the decode step does not use it. Its results decide whether a CUDA kernel (which the issue
allows with a CPU reference of the same arithmetic) is worth building.

Usage (device, repo root, carried wheels installed):  python3 bench/nf4_pair_probe.py
  -> bench/results/nf4_pair_probe_h200.json (or --out)
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
SRC = REPO / "bench" / "nf4_pair_probe.cu"
SHAPES = {"gate": (32768, 5120), "down": (5120, 32768)}
TRITON_LAUNCH = {"gate": (4, 2), "down": (4, 16)}  # (rows per program, K splits): the decode step's per-linear shapes
ROWS, BLOCKS_PER_SM, THREADS, SMEM = (2, 4, 8), (2, 3, 4, 8), 256, 65536
ATTR_MAX_DYNAMIC_SMEM = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES


def compile_cubin() -> tuple[bytes, str]:
    """The probe compiled for sm_90 by the machine's nvcc; returns (cubin, nvcc's register report)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "probe.cubin"
        r = subprocess.run([nvcc, "-cubin", "-arch=sm_90", "-O3", "-Xptxas", "-v", "-o", str(out), str(SRC)],
                           capture_output=True, text=True, check=True)
        return out.read_bytes(), r.stderr


def loop_instructions(cubin: bytes, rows: int) -> dict[str, Any]:
    """Machine instructions per weight in the kernel's K loop (the loop that holds the table loads), counted by
    bench/nf4_sass.py's disassembly of the probe's cubin."""
    from nf4_sass import cubin_loops

    loops = [ops for ops in cubin_loops(cubin, f"nf4_h3_r{rows}")["loops"] if ops.get("LDS")]
    if not loops:
        return {"error": "no K loop found"}
    ops = min(loops, key=lambda o: sum(o.values()))
    weights = rows * 32
    return {"per_weight": round(sum(ops.values()) / weights, 2),
            "by_opcode_per_weight": {k: round(v / weights, 2) for k, v in ops.most_common(8)}}


class Probe:
    """The compiled probe's kernels, launched on torch's current stream through the driver API."""

    def __init__(self, cubin: bytes) -> None:
        import torch

        torch.zeros(1, device="cuda")  # the primary context, current on this thread
        self.cu = ctypes.CDLL("libcuda.so.1")
        self.cu.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
        self._cubin = ctypes.c_char_p(cubin)  # kept alive with the module
        module = ctypes.c_void_p()
        self._check(self.cu.cuModuleLoadData(ctypes.byref(module), self._cubin), "cuModuleLoadData")
        self.fns = {}
        for rows in ROWS:
            fn = ctypes.c_void_p()
            self._check(self.cu.cuModuleGetFunction(ctypes.byref(fn), module, f"nf4_h3_r{rows}".encode()),
                        "cuModuleGetFunction")
            self._check(self.cu.cuFuncSetAttribute(fn, ATTR_MAX_DYNAMIC_SMEM, SMEM), "cuFuncSetAttribute")
            self.fns[rows] = fn

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed with CUDA driver error {code}")

    def __call__(self, rows: int, grid: int, w: Any, x: Any, out: Any) -> Any:
        import torch

        args = [ctypes.c_void_p(w.words.data_ptr()), ctypes.c_void_p(w.absmax.data_ptr()),
                ctypes.c_void_p(w.code2.data_ptr()), ctypes.c_void_p(w.absmax2.data_ptr()),
                ctypes.c_void_p(w.offset.data_ptr()), ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                ctypes.c_int(w.n), ctypes.c_int(w.k)]
        ptrs = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self._check(self.cu.cuLaunchKernel(self.fns[rows], grid, 1, 1, THREADS, 1, 1, SMEM, stream, ptrs, None),
                    "cuLaunchKernel")
        return out


def measure() -> dict[str, Any]:
    import bitsandbytes
    import bitsandbytes.functional as bnbf
    import torch
    import triton

    import gpu_chat as G
    from magistral_kit.model import nf4_kernel as nk

    cubin, report = compile_cubin()
    probe = Probe(cubin)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
                                 "bitsandbytes": bitsandbytes.__version__}},
        "nvcc_registers": re.findall(r"Used (\d+) registers", report),
        "loop": {f"r{rows}": loop_instructions(cubin, rows) for rows in ROWS},
        "shapes": {}}
    code = nk._code_table(torch.device("cuda"))
    for name, (n, k) in SHAPES.items():
        ws = [nk.nf4_weight(G.random_nf4(n, k))[0] for _ in range(6)]
        q0 = G.random_nf4(n, k).weight
        w0 = nk.nf4_weight(G._QLin(q0))[0]
        x = (torch.randn(k, device="cuda") * 0.5).to(torch.bfloat16)
        ref = bnbf.dequantize_4bit(q0, q0.quant_state).float() @ x.float()
        scale = float(ref.abs().max())
        xl = nk.lane_order(x)
        br, sp = TRITON_LAUNCH[name]

        def triton_call(w: Any) -> Any:
            return nk.nf4_gemv_launch(xl, [w.words], [w.absmax], [w.absmax2], [w.offset], code, w.code2, [n], k, sp,
                                      br, 1, True)

        row: dict[str, Any] = {"n": n, "k": k, "mbytes": round(G.nf4_bytes(n, k) / 1e6, 2),
                               "triton_launch": f"br{br}_w1_s{sp}",
                               "triton_err": float((triton_call(w0).sum(0) - ref).abs().max()) / scale}
        idx = [i % len(ws) for i in range(64)]
        row["triton_us"] = round(G.graph_us([(lambda w=ws[i]: triton_call(w)) for i in idx]), 2)
        out = torch.empty(n, device="cuda", dtype=torch.float32)
        probe_rows: dict[str, Any] = {}
        for rows in ROWS:
            for per_sm in BLOCKS_PER_SM:
                grid = sms * per_sm
                y = probe(rows, grid, w0, x, torch.full((n,), float("nan"), device="cuda"))
                err = float((y - ref).abs().max()) / scale  # NaN if any row was left unwritten
                us = G.graph_us([(lambda w=ws[i], r=rows, g=grid: probe(r, g, w, x, out)) for i in idx])
                probe_rows[f"r{rows}_b{per_sm}"] = {"us": round(us, 2), "err": err}
        best = min(probe_rows, key=lambda v: probe_rows[v]["us"])
        row.update(probe=probe_rows, probe_best=best, probe_us=probe_rows[best]["us"])
        res["shapes"][name] = row
        print(name, json.dumps({k_: v for k_, v in row.items() if k_ != "probe"}), flush=True)
    return res


def markdown_table(result: dict) -> str:
    """GPU.md table: the probe against the Triton GEMV per shape, from results/nf4_pair_probe_h200.json."""
    lines = ["| linear (out × in) | MB read | kit Triton GEMV µs (launch) | error | CUDA pair-table probe µs "
             "(rows per warp, blocks per SM) | error |", "|---|---|---|---|---|---|"]
    for name, r in result["shapes"].items():
        best = r["probe"][r["probe_best"]]
        lines.append(f"| {name} {r['n']} × {r['k']} | {r['mbytes']} | {r['triton_us']:.1f} ({r['triton_launch']}) | "
                     f"{r['triton_err']:.1e} | **{r['probe_us']:.1f}** ({r['probe_best']}) | {best['err']:.1e} |")
    loop = ", ".join(f"{k} rows: {v.get('per_weight', '?')}" for k, v in result.get("loop", {}).items())
    return "\n".join(lines) + (
        f"\n\n{result['device']}, torch {result['machine']['versions']['torch']}, triton "
        f"{result['machine']['versions']['triton']}; machine instructions per weight in the probe's K loop: {loop}. "
        "Errors are max |y − ref| / max |ref| against `dequantize_4bit(W).float() @ x.float()` "
        "(`bench/nf4_pair_probe.py`, `results/nf4_pair_probe_h200.json`).\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "nf4_pair_probe_h200.json")
    out = ap.parse_args().out
    os.environ.pop("TRITON_INTERPRET", None)  # the Triton GEMV it is compared with runs compiled
    res = measure()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown_table(res))


if __name__ == "__main__":
    main()
