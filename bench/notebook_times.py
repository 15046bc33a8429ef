"""How long a researcher waits: notebook 01 headless (papermill) and the browser test, on this machine.

Each run records wall seconds, the CPU seconds the run and its kernels used (children's rusage: what the
run would take if it had the cores to itself is between CPU/cores and CPU), the load average before and
after (other processes share the 2 cores here), per-cell seconds for the notebook, and the machine and
library versions. Results are appended to ``bench/results/notebook_times.json`` (a list, newest last).

Usage:  python bench/notebook_times.py notebook      # notebook 01 with its committed defaults, test cube
        python bench/notebook_times.py browser       # pytest tests/test_browser.py
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magistral_kit.diagnostics import machine_info  # noqa: E402

OUT = REPO / "bench" / "results" / "notebook_times.json"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    load_before, cpu_before, start = os.getloadavg(), _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(_children_cpu() - cpu_before, 1), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "tail": (proc.stdout + proc.stderr)[-1500:]}


def notebook() -> dict:
    out = Path(tempfile.mkdtemp()) / "01_memory_chat.ipynb"
    res = run([sys.executable, "-m", "papermill", "--log-level", "WARNING", "-p", "CUBE", "bench-notebook-times",
               "01_memory_chat.ipynb", str(out)], REPO / "notebooks")
    if out.exists():
        nb = json.loads(out.read_text())
        res["cells_s"] = {" | ".join("".join(c["source"]).splitlines()[:1])[:60]:
                          round(c["metadata"].get("papermill", {}).get("duration") or 0, 1)
                          for c in nb["cells"] if c["cell_type"] == "code"}
        from magistral_kit.notebook.results import read_results

        res["recorded"] = read_results(out)
    return res


def browser() -> dict:
    return run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                "tests/test_browser.py"], REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["notebook", "browser"])
    args = parser.parse_args()
    result = {"what": args.what, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **(notebook() if args.what == "notebook" else browser()), "machine": machine_info()}
    history = json.loads(OUT.read_text()) if OUT.exists() else []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(history + [result], indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "tail")}, indent=1))
    return result["returncode"]


if __name__ == "__main__":
    raise SystemExit(main())
