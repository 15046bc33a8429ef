"""The memory layer at 10k, 100k and 1M memories, today's storage beside the journal-format one (commit 204f337).

For each size and implementation a fresh worker process (so RSS is its own):

* add — memories stored with `add_many` in batches of 1,000 with their vectors already computed (the real
  embedder's vectors, from the cache of `scale_corpus.py`): "storage only". The dense index's build (Qdrant
  Edge's HNSW graph, `optimize()`) is timed separately where it runs. "With embedding" combines that rate with
  the embedder's rate measured when the cache was made (1 / (1/storage + 1/embedder)).
* open — `open_memory(path)` of the closed cube in the same (warm) process: imports and model load excluded.
* search — p50 / p95 over distinct questions, the query embedding included (real embedder, one thread), for
  dense-only search and for the chat's default retrieval (dense + BM25 fusion, 50 candidates).
* recall@10 of the dense engine against exact search on the same engine (the approximate index's quality).
* RSS (peak, the worker's) and disk (the cube folder).

The 1M level uses 100k really embedded texts plus 900k derived vectors (see `scale_corpus.derived`): embedding
1M texts on this shared 2-core machine would take hours at the measured rate. The results say so.

    python bench/memory_scale.py [--sizes 10000,100000,1000000] [--legacy-sizes 10000,100000] [--queries 200]
    python bench/memory_scale.py --table          # print the README table from bench/results/memory_scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "memory_scale.json"
REAL = 100_000  # texts embedded for real; larger sizes use derived vectors


# The memory layer before this rebuild (journal + snapshots + qdrant-client local mode), measured side by side.
LEGACY_COMMIT = "204f337"
LEGACY_MODULES = ("cube", "durable", "memos_fixes", "retrieval")


def legacy_package(dest: Path) -> Path:
    """Write the memory layer as it was at LEGACY_COMMIT into ``dest/legacy_memory`` from git history (its own
    imports pointed at that copy) and return ``dest`` for sys.path. Needs a clone with history."""
    pkg = dest / "legacy_memory"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(f'"""magistral_kit/memory at {LEGACY_COMMIT}, for bench/memory_scale.py only."""\n')
    for name in LEGACY_MODULES:
        done = subprocess.run(["git", "-C", str(REPO), "show", f"{LEGACY_COMMIT}:magistral_kit/memory/{name}.py"],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"cannot read commit {LEGACY_COMMIT} ({done.stderr.strip()}). Fix: run the comparison "
                             f"in a full clone (git fetch --unshallow), or leave out the 'before' implementation.")
        text = done.stdout
        for old, new in (("from magistral_kit.memory import durable", "from legacy_memory import durable"),
                         ("magistral_kit.memory.durable", "legacy_memory.durable"),
                         ("from magistral_kit.memory import memos_fixes", "from legacy_memory import memos_fixes"),
                         ("magistral_kit.memory.retrieval", "legacy_memory.retrieval")):
            text = text.replace(old, new)
        (pkg / f"{name}.py").write_text(text)
    return dest

def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def machine() -> dict:
    from importlib.metadata import version

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "memory_gib": mem_gib, "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg(),
            "sqlite": __import__("sqlite3").sqlite_version,
            "versions": {p: version(p) for p in ("MemoryOS", "qdrant-client", "qdrant-edge-py", "sentence-transformers",
                                                 "torch", "numpy")},
            "note": "shared machine: other jobs ran beside this one (loadavg recorded per measurement)"}


# --- the worker -----------------------------------------------------------------------------------------


class Precomputed:
    """Stands in for the embedder: cached vectors for corpus texts, the real model for anything else."""

    def __init__(self, real, texts: list[str], vecs) -> None:
        self.real, self.name, self.dimension = real, real.name, real.dimension
        self.lookup = {t: i for i, t in enumerate(texts)}
        self.vecs = vecs

    def encode(self, texts: list[str], batch_size: int = 64):
        import numpy as np

        idx = [self.lookup.get(t) for t in texts]
        if all(i is not None for i in idx):
            return np.ascontiguousarray(self.vecs[idx])
        return self.real.encode(texts, batch_size=batch_size)


def timed_searches(mem, qs: list[str]) -> dict:
    """p50 / p95 / mean (ms) of `mem.search(q, 5)` over the questions, each asserted to find 5 memories."""
    ms = []
    for q in qs:
        t = time.perf_counter()
        hits = mem.search(q, 5)
        ms.append((time.perf_counter() - t) * 1000)
        assert len(hits) == 5
    return {"p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "n": len(ms)}


def worker(impl: str, n: int, queries: int, folder: Path, hnsw_sizes: set[int]) -> dict:
    import numpy as np

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(BENCH))
    import torch

    torch.set_num_threads(1)
    import scale_corpus as corpus
    from magistral_kit.memory.embedding import get_embedder

    texts, vecs, emb_info = corpus.embed_cached(min(n, REAL), progress=False)
    texts, vecs = corpus.derived(texts, vecs, n)
    real = get_embedder("embedded")
    fake = Precomputed(real, texts, vecs)
    if impl == "kit":
        import magistral_kit.memory.cube as M
        from magistral_kit.memory.retrieval import RetrievalOptions
    else:
        sys.path.insert(0, str(legacy_package(REPO / "tmp" / "legacy_memory_src")))
        import legacy_memory.cube as M
        from legacy_memory.retrieval import RetrievalOptions
    M.get_embedder = lambda name="embedded": fake
    out: dict = {"impl": impl, "memories": n, "real_texts": min(n, REAL), "derived_vectors": max(0, n - REAL)}
    path = folder / f"{impl}-{n}"
    mem = M.open_memory(path)
    t0 = time.perf_counter()
    for s in range(0, n, 1000):
        mem.add_many([{"text": t, "source": [f"D{s // 1000}:{j}"], "kind": "ingested"}
                      for j, t in enumerate(texts[s:s + 1000])])
    add_s = time.perf_counter() - t0
    out["add_seconds"] = round(add_s, 1)
    out["add_per_second"] = round(n / add_s, 1)
    out["loadavg_after_add"] = os.getloadavg()
    if impl == "legacy":
        t0 = time.perf_counter()
        mem.save()
        out["save_seconds"] = round(time.perf_counter() - t0, 1)
    mem.close()
    out["disk_mib"] = round(du(path) / 2**20, 1)
    t0 = time.perf_counter()
    mem = M.open_memory(path)
    out["open_seconds"] = round(time.perf_counter() - t0, 2)
    out["open_notes"] = [x[:200] for x in mem.notes]
    qs = corpus.queries(queries)
    real.encode(["warm up"])
    for label, opts in (("dense", None), ("chat_default", RetrievalOptions())):
        mem.retrieval = opts
        if opts is not None and impl == "legacy":
            mem._build_lexical()
        if opts is not None and impl == "kit":
            pass  # the lexical index is in SQLite already
        out[f"search_{label}"] = timed_searches(mem, qs)
    # the same searches with the query vectors computed beforehand: what the storage itself costs
    qvecs = real.encode(qs)
    fake.lookup.update({q: len(fake.vecs) + i for i, q in enumerate(qs)})
    fake.vecs = np.concatenate([fake.vecs, qvecs])
    for label, opts in (("dense", None), ("chat_default", RetrievalOptions())):
        mem.retrieval = opts
        out[f"search_{label}_excl_embedding"] = timed_searches(mem, qs)
    ms_embed = []
    for q in qs[:100]:
        t = time.perf_counter()
        real.encode([q])
        ms_embed.append((time.perf_counter() - t) * 1000)
    out["query_embedding_p50_ms"] = round(pct(ms_embed, 50), 2)
    if impl == "kit":
        out["dense_engine"] = mem.dense_index.kind
        out["search_mode"] = "exact (Qdrant Edge plain segments)"
        # what is measured so far, in case the HNSW build below outlasts the time available
        partial = Path(tempfile.gettempdir()) / f"memory_scale_partial_{impl}_{n}.json"
        partial.write_text(json.dumps({**out, "peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "partial": "before the HNSW build"}))
        if n in hnsw_sizes:
            mem.retrieval = None
            t0 = time.perf_counter()
            mem.build_index()
            out["hnsw_build_seconds"] = round(time.perf_counter() - t0, 1)
            out["hnsw_build_per_second"] = round(n / (time.perf_counter() - t0), 1)
            precomputed = {q: fake.lookup.pop(q) for q in qs if q in fake.lookup}
            for excl in (False, True):  # with the query embedding (real embedder), then without
                if excl:
                    fake.lookup.update(precomputed)
                for label, opts in (("dense", None), ("chat_default", RetrievalOptions())):
                    mem.retrieval = opts
                    out[f"search_{label}_hnsw" + ("_excl_embedding" if excl else "")] = timed_searches(mem, qs)
            mem.retrieval = None
            rec = []
            for v in real.encode(qs[:100]):
                got = {i for i, _ in mem.dense_index.search(v, 10)}
                exact = {i for i, _ in mem.dense_index.search(v, 10, exact=True)}
                rec.append(len(got & exact) / 10)
            out["hnsw_recall_at_10_vs_exact"] = round(float(np.mean(rec)), 4)
            out["hnsw_params"] = {"m": 16, "ef_construct": 100, "hnsw_ef": mem.dense_index.hnsw_ef,
                                  "indexing_threads": 1}
    out["loadavg_end"] = os.getloadavg()
    mem.close()
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["embedder"] = emb_info
    shutil.rmtree(path, ignore_errors=True)
    return out


# --- the driver -----------------------------------------------------------------------------------------


def markdown_table(result: dict) -> str:
    """The README table for a results dict of this script (one row per size and implementation)."""
    head = ("| memories | implementation | add/s, storage only | add/s, with embedding | open | "
            "search p50 / p95, dense | search p50 / p95, chat default | same without the query embedding, dense / chat | "
            "HNSW: build, search p50 dense / chat (query embedding included), recall@10 | peak RSS | disk |\n|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n")
    rate = (result.get("embedder") or {}).get("texts_per_second")
    rows = []
    for r in result.get("runs", []):
        impl = "SQLite + Qdrant Edge" if r["impl"] == "kit" else "before: journal + qdrant local"
        if r.get("derived_vectors"):
            impl += " ¹"
        if "error" in r:
            rows.append(f"| {r['memories']:,} | {impl} | failed: {r['error'][-80:]!r} | | | | | | | |")
            continue
        with_emb = f"{1 / (1 / r['add_per_second'] + 1 / rate):,.0f}" if rate else "–"
        d, c = r["search_dense"], r["search_chat_default"]
        xd = f"{r['search_dense_excl_embedding']['p50_ms']:.1f}" if "search_dense_excl_embedding" in r else "–"
        xc = f"{r['search_chat_default_excl_embedding']['p50_ms']:.1f}" if "search_chat_default_excl_embedding" in r else "–"
        h = r.get("search_dense_hnsw") if "search_dense_hnsw_excl_embedding" in r else None  # older runs: no
        hc = r.get("search_chat_default_hnsw")
        hnsw = (f"{r['hnsw_build_seconds']:,.0f} s, {h['p50_ms']:.1f}" + (f" / {hc['p50_ms']:.1f}" if hc else "")
                + f" ms, {r['hnsw_recall_at_10_vs_exact']:.3f}"
                if h else ("not built (exact search)" if r["impl"] == "kit" else "–"))
        rows.append(f"| {r['memories']:,} | {impl} | {r['add_per_second']:,.0f} | {with_emb} | "
                    f"{r['open_seconds']:.2f} s | {d['p50_ms']:.1f} / {d['p95_ms']:.1f} ms | "
                    f"{c['p50_ms']:.1f} / {c['p95_ms']:.1f} ms | {xd} / {xc} ms | {hnsw} | "
                    f"{r['peak_rss_mib'] / 1024:.2f} GiB | {r['disk_mib']:,.0f} MiB |")
    notes = ("\n\nSearch times include embedding the query unless said; the machine's load average during each "
             "run is in the JSON. ¹ 100k really embedded texts + derived vectors "
             "(normalize(v_a + 0.35 v_b)); see bench/scale_corpus.py.")
    if rate:
        notes += f" With embedding: the embedder ran at {rate:.0f} texts/s on this machine (all-MiniLM-L6-v2, CPU)."
    return head + "\n".join(rows) + notes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--legacy-sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--hnsw-sizes", default="100000", help="sizes at which the HNSW graph is built and measured")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "N"))
    ap.add_argument("--dir")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--merge", action="store_true", help="keep runs of sizes not measured now from --out")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.out).read_text())))
        return
    if args.worker:
        res = worker(args.worker[0], int(args.worker[1]), args.queries, Path(args.dir),
                     {int(x) for x in args.hnsw_sizes.split(',') if x})
        print("RESULT " + json.dumps(res), flush=True)
        return
    sys.path.insert(0, str(BENCH))
    import scale_corpus as corpus

    sizes = [int(x) for x in args.sizes.split(",") if x]
    legacy = {int(x) for x in args.legacy_sizes.split(",") if x}
    _, _, emb = corpus.embed_cached(min(max(sizes), REAL))
    result = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "corpus": {"generator": "bench/scale_corpus.py (seeded templates)", "seed": corpus.SEED,
                         "real_texts": min(max(sizes), REAL),
                         "derived_above": REAL, "derived_rule": "normalize(v_a + 0.35 * v_b), text '<a> (variant i)'"},
              "embedder": emb, "queries": args.queries, "runs": []}
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        now = {(impl, n) for n in sizes for impl in (["kit", "legacy"] if n in legacy else ["kit"])}
        result["runs"] = [r for r in old.get("runs", []) if (r["impl"], r["memories"]) not in now]
    root = Path(tempfile.mkdtemp(prefix="memory_scale_", dir=str(REPO / "tmp")))
    try:
        for n in sizes:
            for impl in (["kit", "legacy"] if n in legacy else ["kit"]):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", impl, str(n),
                                       "--dir", str(root), "--queries", str(args.queries),
                                       "--hnsw-sizes", args.hnsw_sizes],
                                      capture_output=True, text=True, cwd=str(REPO),
                                      env={**os.environ, "PYTHONPATH": f"{REPO}:{BENCH}", "OMP_NUM_THREADS": "1"})
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                run = json.loads(line[-1][7:]) if line else {
                    "impl": impl, "memories": n, "error": proc.stderr[-2000:]}
                run["wall_seconds"] = round(time.perf_counter() - t0, 1)
                result["runs"].append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "embedder"})[:1500], flush=True)
                result["runs"].sort(key=lambda r: (r["memories"], r["impl"]))
                Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(markdown_table(result))


if __name__ == "__main__":
    main()
