"""Timers, memory readings and the small HTML helpers every visible object uses.

Nothing heavy is imported here at module level, so any module can use it.
"""
from __future__ import annotations

import html
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class MemoryReading:
    """GPU memory allocated/peak (GiB) when CUDA is in use, and the process RSS (GiB) always."""

    rss_gib: float
    gpu_allocated_gib: float | None = None
    gpu_peak_gib: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"rss_gib": self.rss_gib, "gpu_allocated_gib": self.gpu_allocated_gib,
                "gpu_peak_gib": self.gpu_peak_gib}

    def __str__(self) -> str:
        if self.gpu_allocated_gib is not None:
            return (f"GPU {self.gpu_allocated_gib:.2f} GiB allocated, {self.gpu_peak_gib:.2f} GiB peak; "
                    f"RSS {self.rss_gib:.2f} GiB")
        return f"RSS {self.rss_gib:.2f} GiB (CPU)"


def memory_reading() -> MemoryReading:
    """Read process RSS and, where CUDA is initialised, the allocator's current and peak bytes."""
    import psutil

    rss = psutil.Process(os.getpid()).memory_info().rss / 2**30
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return MemoryReading(rss, torch.cuda.memory_allocated() / 2**30,
                                 torch.cuda.max_memory_allocated() / 2**30)
    except ImportError:
        pass
    return MemoryReading(rss)


@dataclass
class Timings:
    """Seconds per named step, in the order the steps ran."""

    steps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.steps.values())

    def to_html(self) -> str:
        # one header row and one value row, both right-aligned: each name sits over its number
        right = "style='text-align:right'"
        heads = "".join(f"<th {right}>{html.escape(k)}</th>" for k in self.steps) + f"<th {right}>total</th>"
        values = "".join(f"<td {right}>{v * 1000:.0f} ms</td>" if v < 1 else f"<td {right}>{v:.1f} s</td>"
                         for v in self.steps.values())
        return (f"<table class='mk-timings'><thead><tr>{heads}</tr></thead><tbody><tr>{values}"
                f"<td {right}><b>{self.total:.2f} s</b></td></tr></tbody></table>")


def table_html(rows: list[tuple[str, Any]], caption: str = "") -> str:
    """A two-column key/value table, values escaped."""
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    cap = f"<caption style='text-align:left'><b>{html.escape(caption)}</b></caption>" if caption else ""
    return f"<table>{cap}{body}</table>"


def details_html(summary: str, body: str, open_: bool = False) -> str:
    """A collapsible block; body is pre-formatted text, escaped here."""
    return (f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>"
            f"<pre style='white-space:pre-wrap'>{html.escape(body)}</pre></details>")


def machine_info() -> dict[str, Any]:
    """The machine and library versions a benchmark figure was measured with (bench/ scripts record it)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import psutil

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
                            "python": platform.python_version(), "platform": platform.platform()}
    versions = {}
    for pkg in ("torch", "transformers", "bitsandbytes", "MemoryOS", "qdrant-client", "sentence-transformers",
                "mistral-common"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    info["versions"] = versions
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
