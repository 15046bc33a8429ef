"""What the kit's NF4 GEMV asks of an H100/H200 SM: machine instructions per weight, read from the compiled code.

Why: on the H200 the GEMV moves its bytes at about half of what the bf16 lm_head reaches; the hardware counters
(bench/nf4_ncu.py) show which unit is busy, and this script counts what each weight costs in the inner loop: it
compiles the kernel exactly as the
decode step launches it (Triton's own ptxas for sm_90, on this CPU machine, no GPU needed), disassembles it with
Triton's bundled nvdisasm, and counts the instructions of the K loop. Turning the count into time needs the SM
clock and issue rate (one warp instruction per cycle per scheduler, four schedulers per SM), which the table
states as assumptions.

Usage:  python bench/nf4_sass.py            # writes bench/results/nf4_sass.json
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "results" / "nf4_sass.json"

ARCH = 90  # H100 / H200
SHAPES = {"gate 32768 × 5120": (32768, 5120), "down 5120 × 32768": (5120, 32768)}  # for the time estimate
SM_COUNT, CLOCK_GHZ, SCHEDULERS = 132, 1.98, 4  # H200 SXM: SMs, maximum SM clock, warp schedulers per SM


def _bin(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_gemv(block_rows: int, gate_up: bool = False) -> Any:
    """The GEMV (or the fused gate|up kernel) compiled for sm_90 with the runtime's specialisation of the decode
    launch: pointers and sizes divisible by 16, whole steps and tiles (EVEN), x in lane order, one warp."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from magistral_kit.model import nf4_kernel as nk

    if gate_up:
        fn = nk._nf4_gate_up_kernel
        sig = {"x_ptr": "*bf16", "out_ptr": "*bf16", "code_ptr": "*fp32", "code2_ptr": "*fp32",
               "wg": "*i32", "ag": "*u8", "sg": "*fp32", "og": "*fp32", "wu": "*i32", "au": "*u8", "su": "*fp32",
               "ou": "*fp32", "N": "i32", "K": "i32", "BR": "constexpr", "W": "constexpr", "EVEN": "constexpr",
               "XL": "constexpr", "OL": "constexpr"}
        const = {"BR": block_rows, "W": 1, "EVEN": True, "XL": True, "OL": True}
        div16 = [n for n, t in sig.items() if t.startswith("*")] + ["N", "K"]
    else:
        fn = nk._nf4_gemv_kernel
        seg = lambda i: {f"w{i}": "*i32", f"a{i}": "*u8", f"s{i}": "*fp32", f"o{i}": "*fp32", f"n{i}": "i32"}  # noqa: E731
        sig = {"x_ptr": "*bf16", "out_ptr": "*fp32", "code_ptr": "*fp32", "code2_ptr": "*fp32",
               **seg(0), **seg(1), **seg(2), "K": "i32", "K_SPLIT": "i32", "N_TOTAL": "i32", "BR": "constexpr",
               "NSEG": "constexpr", "W": "constexpr", "EVEN": "constexpr", "XL": "constexpr"}
        const = {"BR": block_rows, "NSEG": 1, "W": 1, "EVEN": True, "XL": True}
        div16 = [n for n, t in sig.items() if t.startswith("*")] + ["n0", "n1", "n2", "K", "K_SPLIT", "N_TOTAL"]
    names = list(sig)
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in div16})
    return triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options={"num_warps": 1})


def loop_stats(kernel: Any) -> dict[str, Any]:
    """Instruction counts of each backward-branching loop of a compiled Triton kernel's SASS, and its registers."""
    return cubin_loops(kernel.asm["cubin"])


def cubin_loops(cubin: bytes, function: str | None = None) -> dict[str, Any]:
    """Instruction counts of each backward-branching loop in a cubin's SASS, and the registers: of the whole
    cubin, or of one of its functions (the CUDA GEMV's cubin holds several; tests/test_nf4_cuda.py reads it)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([_bin("nvdisasm"), "-c", str(path)], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True).stdout
    if function is not None:  # that function's section of the disassembly, and its line of the resource report
        sass = sass.split(f".section\t.text.{function},", 1)[1].split(".section\t.text.", 1)[0]
        res = res.split(f"Function {function}:", 1)[1]
    lines, labels, loops = sass.splitlines(), {}, []
    for n, line in enumerate(lines):
        m = re.match(r"^(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = n
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), n) < n:
            ops: collections.Counter = collections.Counter()
            for body in lines[labels[m.group(1)]:n + 1]:
                op = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", body)
                if op:
                    ops[op.group(1)] += 1
            if sum(ops.values()) > 8:  # not the trailing self-branch
                loops.append(ops)
    regs = re.search(r"REG:(\d+)", res)
    return {"loops": loops, "registers": int(regs.group(1)) if regs else None}


def measure() -> dict[str, Any]:
    import triton

    from magistral_kit.diagnostics import machine_info

    out: dict[str, Any] = {"target": f"sm_{ARCH}", "triton": triton.__version__, "machine": machine_info(),
                           "gemv": {}, "gate_up": {}}
    for br in (1, 2, 4, 8):
        st = loop_stats(compile_gemv(br))
        ops = st["loops"][0]
        weights = br * 32  # per thread and loop step: block_rows rows x 32 weights
        out["gemv"][f"br{br}"] = {"registers": st["registers"], "loop_instructions": sum(ops.values()),
                                  "weights_per_thread_step": weights,
                                  "per_weight": round(sum(ops.values()) / weights, 2),
                                  "by_opcode_per_weight": {k: round(v / weights, 2) for k, v in ops.most_common(8)}}
    st = loop_stats(compile_gemv(8, gate_up=True))
    out["gate_up"]["br8"] = {"registers": st["registers"],
                             "per_weight_each_loop": [round(sum(o.values()) / 256, 2) for o in st["loops"]]}
    return out


def markdown_table(result: dict) -> str:
    """GPU.md table: instructions per weight of the compiled GEMV loop, and the time they take at full issue."""
    lines = ["| rows per one-warp program | registers | instructions per weight (K loop) | of which SHFL / FFMA | "
             "gate at full issue rate, µs | down at full issue rate, µs |", "|---|---|---|---|---|---|"]
    for key, r in result["gemv"].items():
        by = r["by_opcode_per_weight"]
        est = [r["per_weight"] * n * k / 32 / (SM_COUNT * SCHEDULERS * CLOCK_GHZ * 1e3) for n, k in SHAPES.values()]
        lines.append(f"| {key[2:]} | {r['registers']} | **{r['per_weight']:.2f}** | {by.get('SHFL', 0):.2f} / "
                     f"{by.get('FFMA', 0):.2f} | {est[0]:.1f} | {est[1]:.1f} |")
    gu = result.get("gate_up", {}).get("br8")
    tail = (f" The fused gate|up kernel (8 rows) runs two such loops: {', '.join(map(str, gu['per_weight_each_loop']))} "
            f"instructions per weight, {gu['registers']} registers." if gu else "")
    return "\n".join(lines) + (
        f"\n\nCompiled on the CPU for {result['target']} by triton {result['triton']} (its bundled ptxas), counted "
        "in the disassembled K loop (`bench/nf4_sass.py`, `results/nf4_sass.json`). The time columns assume one "
        f"warp instruction per cycle on each of {SCHEDULERS} schedulers of {SM_COUNT} SMs at {CLOCK_GHZ} GHz "
        "(the H200's maximum clock), no stalls." + tail + "\n")


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    res = measure()
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown_table(res))
