"""What limits the kit's NF4 GEMV on the GPU, read from Nsight Compute's hardware counters.

Why: timings alone could not tell whether the GEMV waits on DRAM, on instruction issue or on one unit (the
prefetch and lookup experiments of the previous kernel moved nothing). This script profiles one launch of the
gate projection (32768 x 5120, random weights quantized by bitsandbytes, the decode step's launch shape) with x
in natural order and in lane order, and records the counters that answer it: time and SM clock (Nsight locks
the clock, so its durations are longer than the CUDA-graph timings of gpu_chat.py), DRAM throughput, the L1
data pipe (which serves both the table shuffles and the loads), issue slots, pipe utilisation and occupancy.

Usage (on the GPU machine, `ncu` on PATH):  python bench/nf4_ncu.py --out bench/results/nf4_ncu_h200.json
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPLIT, ROWS = 3, 4  # gate's launch shape in the decode step's sweep (DecodeSplits)
N, K = 32768, 5120  # gate (bench/gpu_chat.py LINEAR_SHAPES)
METRICS = {
    "gpu__time_duration.sum": "duration_us",
    "sm__cycles_elapsed.avg.per_second": "sm_clock_hz",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram_pct",
    "l1tex__data_pipe_lsu_wavefronts.avg.pct_of_peak_sustained_elapsed": "l1_data_pipe_pct",
    "l1tex__data_pipe_lsu_wavefronts.sum": "l1_data_pipe_wavefronts",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum": "l1_wavefronts_shared_incl_shuffles",
    "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum": "global_load_requests",
    "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum": "global_load_sectors",
    "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue_slots_busy_pct",
    "sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active": "alu_pipe_pct",
    "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active": "fma_pipe_pct",
    "sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active": "lsu_pipe_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved_occupancy_pct",
    "smsp__inst_executed.sum": "instructions",
    "launch__registers_per_thread": "registers",
}


# Nsight's units -> the JSON's (durations in µs, clocks in Hz)
_UNIT = {"nsecond": 1e-3, "ns": 1e-3, "msecond": 1e3, "ms": 1e3, "cycle/nsecond": 1e9, "cycle/ns": 1e9,
         "cycle/usecond": 1e6, "cycle/us": 1e6}


def launch(order: str) -> None:
    """The profiled process: 8 launches over 4 weight copies (ncu takes the 5th)."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from gpu_chat import LINEAR_SHAPES, random_nf4

    from magistral_kit.model import nf4_kernel as nk

    assert LINEAR_SHAPES["gate"] == (N, K)
    ws = [nk.nf4_weight(random_nf4(N, K))[0] for _ in range(4)]
    code = nk._code_table(torch.device("cuda"))
    x = torch.randn(K, device="cuda").to(torch.bfloat16)
    lane = order == "lane"
    if lane:
        x = nk.lane_order(x)
    for i in range(8):
        w = ws[i % 4]
        nk.nf4_gemv_launch(x, [w.words], [w.absmax], [w.absmax2], [w.offset], code, w.code2, [N], K, SPLIT, ROWS,
                           1, lane)
    torch.cuda.synchronize()


def profile(order: str) -> dict[str, Any]:
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    cmd = [ncu, "--target-processes", "all", "-k", "regex:_nf4_gemv", "--launch-skip", "4", "--launch-count", "1",
           "--metrics", ",".join(METRICS), "--csv", "--page", "raw",
           sys.executable, str(Path(__file__).resolve()), "--launch", order]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO))
    return parse_raw(r.stdout) or {"error": (r.stderr or r.stdout)[-800:]}


def parse_raw(text: str) -> dict[str, Any]:
    """METRICS of the first profiled launch in `ncu --csv --page raw` output (names, units, values rows), in
    the JSON's units; {} when there is no such table."""
    rows = [ln for ln in text.splitlines() if ln.startswith('"')]
    table = list(csv.reader(io.StringIO("\n".join(rows))))
    if len(table) < 3:
        return {}
    head, units, vals = table[0], table[1], table[2]
    return {METRICS[name]: round(float(val.replace(",", "")) * _UNIT.get(unit, 1.0), 3)
            for name, unit, val in zip(head, units, vals) if name in METRICS}


def markdown_table(result: dict) -> str:
    """GPU.md table: the counters of the gate GEMV, natural vs lane order."""
    p = result.get("profiles", {})
    rows = [("time under Nsight (clock locked), µs", "duration_us", 1), ("SM clock, GHz", "sm_clock_ghz", 2),
            ("DRAM throughput, % of peak", "dram_pct", 1), ("L1 data pipe busy, % of peak", "l1_data_pipe_pct", 1),
            ("L1 data-pipe wavefronts (millions)", "l1_data_pipe_wavefronts_m", 2),
            ("… of which shared-memory pipe, incl. table shuffles (millions)", "l1_wavefronts_shared_m", 2),
            ("global-load requests (millions)", "global_load_requests_m", 2),
            ("issue slots busy, %", "issue_slots_busy_pct", 1), ("ALU pipe, %", "alu_pipe_pct", 1),
            ("LSU pipe, %", "lsu_pipe_pct", 1), ("FMA pipe, %", "fma_pipe_pct", 1),
            ("achieved occupancy, %", "achieved_occupancy_pct", 1), ("registers per thread", "registers", 0)]
    lines = ["| counter (gate 32768 × 5120, one launch) | x in natural order | x in lane order |", "|---|---|---|"]
    for label, key, nd in rows:
        cells = []
        for order in ("natural", "lane"):
            r = dict(p.get(order, {}))
            if "sm_clock_hz" in r:
                r["sm_clock_ghz"] = r["sm_clock_hz"] / 1e9
            for src, dst in (("l1_data_pipe_wavefronts", "l1_data_pipe_wavefronts_m"),
                             ("l1_wavefronts_shared_incl_shuffles", "l1_wavefronts_shared_m"),
                             ("global_load_requests", "global_load_requests_m")):
                if src in r:
                    r[dst] = r[src] / 1e6
            cells.append(f"{r[key]:.{nd}f}" if key in r else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    m = result.get("machine", {})
    lines += ["", f"Nsight Compute {result.get('ncu', '?')} on {result.get('device', '?')}, triton "
              f"{m.get('versions', {}).get('triton', '?')}, launch {result.get('launch', '?')} "
              "(`bench/nf4_ncu.py`, `results/nf4_ncu_h200.json`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--launch", choices=("natural", "lane"), help="(internal) the profiled process")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "nf4_ncu_h200.json"))
    args = ap.parse_args()
    if args.launch:
        return launch(args.launch)
    import platform

    import bitsandbytes
    import torch
    import triton

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
                         "bitsandbytes": bitsandbytes.__version__}}
    ver = subprocess.run([shutil.which("ncu") or "/usr/local/cuda/bin/ncu", "--version"], capture_output=True,
                         text=True).stdout.strip().splitlines()
    res = {"device": torch.cuda.get_device_name(0), "machine": info, "ncu": ver[-1] if ver else "?",
           "launch": f"gate {N} x {K}, {ROWS} rows per one-warp program, {SPLIT} K splits",
           "profiles": {order: profile(order) for order in ("natural", "lane")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(markdown_table(res))


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    main()
