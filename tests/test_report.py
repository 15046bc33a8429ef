"""Figures come from results: every table of figures in README.md and bench/GPU.md is generated from a JSON
in bench/results/ by the bench script that wrote it (bench/report.py), and no measured figure sits outside
those tables."""
from __future__ import annotations

import importlib.util
import re

import pytest

from magistral_kit.config import REPO_ROOT

spec = importlib.util.spec_from_file_location("bench_report", REPO_ROOT / "bench" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

# a number with a unit of measurement (time, size, rate, share) — what a measurement looks like in prose
MEASURED = re.compile(r"(?<![\w.])~?\d[\d,.]*\s?(?:ms|s|min|GiB|GB|MB|tok/s|%)(?![\w])")
CODE = re.compile(r"```.*?```", re.S)


def test_every_table_matches_its_results():
    assert report.main(["--check"]) == 0, "a table differs from bench/results: run `python bench/report.py`"


def test_each_document_holds_generated_tables_and_every_block_is_registered():
    for doc in report.DOCUMENTS:
        names = report.blocks(doc.read_text(encoding="utf-8"))
        assert names, f"{doc.name} has no generated table"
        assert set(names) <= set(report.TABLES)


def test_a_changed_figure_is_caught():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    name = report.blocks(text)[0]
    body = report.render(name)
    tampered = text.replace(body, body.replace("|", "| 99.9 ms", 1), 1)
    assert report.regenerate(tampered)[1] == [name]


@pytest.mark.parametrize("doc", report.DOCUMENTS, ids=lambda p: p.name)
def test_no_measured_figure_outside_the_generated_tables(doc):
    text = CODE.sub("", report._BLOCK.sub("", doc.read_text(encoding="utf-8")))
    stray = MEASURED.findall(text)
    assert not stray, f"{doc.name}: figures outside a generated table (move them into a bench results table): {stray}"


def test_nsight_units_are_converted() -> None:
    """bench/nf4_ncu.py reads `ncu --csv --page raw`; Nsight writes durations in ns or µs and clocks in cycle/ns
    or Hz depending on the magnitude, and the JSON keeps µs and Hz whichever it chose."""
    ncu = report._module("bench/nf4_ncu.py")
    head = '"ID","gpu__time_duration.sum","sm__cycles_elapsed.avg.per_second","launch__registers_per_thread"'
    for dur_unit, dur, clk_unit, clk in (("ns", "56,992", "cycle/ns", "1.50"), ("us", "56.99", "Hz", "1500000000")):
        text = f'==PROF== noise\n{head}\n"","{dur_unit}","{clk_unit}","register/thread"\n"0","{dur}","{clk}","64"\n'
        got = ncu.parse_raw(text)
        assert got == {"duration_us": pytest.approx(56.99, abs=0.01), "sm_clock_hz": pytest.approx(1.5e9),
                       "registers": 64.0}, (dur_unit, got)
    assert ncu.parse_raw("==ERROR== no kernels were profiled") == {}


def test_kernel_defaults_are_the_recorded_runs_choice() -> None:
    """DecodeSplits' and NORM_WARPS' defaults are what the H200 run in bench/results chose and decoded with, so the
    figures in GPU.md are the code's own (a re-tuned run that is not carried into the defaults fails here)."""
    import dataclasses
    import json

    from magistral_kit.model import nf4_kernel as nk

    run = json.loads((REPO_ROOT / "bench" / "results" / "gpu_chat_h200.json").read_text())
    defaults = {k: list(v) for k, v in dataclasses.asdict(nk.DecodeSplits()).items()}
    assert defaults == run["decode_splits_used"] == run["kernels"]["splits_best"]
    assert nk.NORM_WARPS == run["norm_warps_used"]
    # which linears run on the CUDA GEMV, and how it is launched: the run's choice too
    from magistral_kit.model import nf4_cuda as nc

    launch = {k: (list(v) if v is not None else None) for k, v in dataclasses.asdict(nc.PairLaunch()).items()}
    assert launch == run["pair_launch_used"] == run["kernels"]["pair"]["launch_best"]
