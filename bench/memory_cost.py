"""Cost of the memory layer itself (not generation, not extraction), with the machine it ran on.

(a) per turn: search(top_k=5) + add_many of 3 extracted items (embedding, SQLite commit, dense index);
    target <= 100 ms.
(b) search p50/p95 on a cube of 10,000 memories, embedding the query included; every query is distinct
    (no cache can help); target p50 <= 20 ms. The split into embedding and dense-index time is recorded too.
Also: ingestion rate (add_many batches), save() (a WAL checkpoint), reopen (index consistency check) and a
full dense-index rebuild from the SQLite record. bench/memory_scale.py measures 10k / 100k / 1M.

    python bench/memory_cost.py [--memories 10000] [--queries 300] [--out bench/results/memory_cost.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAMES = ["Ana", "Caroline", "Melanie", "Tom", "Jerry", "Priya", "Kenji", "Lucas", "Fatima", "Olga", "Sam", "Noor"]
ACTS = ["went hiking", "adopted a dog", "started a pottery class", "visited the museum", "ran a half marathon",
        "painted a sunset", "moved to a new flat", "cooked a curry", "joined a choir", "read a novel",
        "planted tomatoes", "fixed an old bicycle", "went to a concert", "wrote a poem", "learned to swim"]
PLACES = ["in Lisbon", "near the lake", "at the community centre", "in Kyoto", "downtown", "at her parents' house",
          "by the beach", "in the mountains", "at work", "with friends"]
WHEN = ["last Monday", "in May 2023", "two weeks ago", "yesterday", "on 12 August", "over the weekend",
        "in spring", "on her birthday", "after the exam", "at 7 pm"]
FEEL = ["and loved it", "and felt proud", "but it rained", "and wants to do it again", "with her sister",
        "to relax", "for the first time", "despite being tired", "", ""]


def sentence(rng: random.Random) -> str:
    return " ".join(filter(None, [rng.choice(NAMES), rng.choice(ACTS), rng.choice(PLACES), rng.choice(WHEN),
                                  rng.choice(FEEL)])) + "."


def question(rng: random.Random, i: int) -> str:
    return (f"{rng.choice(['When did', 'Where did', 'Why did', 'How often did', 'Did'])} {rng.choice(NAMES)} "
            f"{rng.choice(ACTS).split(' ', 1)[1]} {rng.choice(PLACES)}? (#{i})")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "max_ms": round(max(ms), 2)}


def machine() -> dict:
    import numpy
    import qdrant_client  # noqa: F401
    import sentence_transformers
    import torch
    import transformers
    from importlib.metadata import version

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg(),
            "versions": {"MemoryOS": version("MemoryOS"), "qdrant-client": version("qdrant-client"),
                         "qdrant-edge-py": version("qdrant-edge-py"),
                         "sentence-transformers": sentence_transformers.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "numpy": numpy.__version__}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memories", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "memory_cost.json"))
    args = ap.parse_args()

    from magistral_kit.memory.cube import open_memory

    rng = random.Random(11)
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="memory_cost_", dir=str(REPO / "tmp") if (REPO / "tmp").is_dir() else None))
    result: dict = {"machine": info, "memories": args.memories}
    try:
        t = time.perf_counter()
        mem = open_memory(root / "cube")
        result["first_open_s"] = round(time.perf_counter() - t, 2)  # imports MemOS, loads the embedder

        # ingestion: batches of 600 (one LoCoMo conversation's worth of turns)
        t = time.perf_counter()
        for start in range(0, args.memories, 600):
            n = min(600, args.memories - start)
            mem.add_many([{"text": sentence(rng), "source": [f"D{start // 600}:{i}"], "kind": "ingested",
                           "meta": {"speaker": rng.choice(NAMES)}} for i in range(n)])
        ingest = time.perf_counter() - t
        result["ingest"] = {"seconds": round(ingest, 1), "memories_per_s": round(args.memories / ingest, 1)}
        print(f"ingested {len(mem)} in {ingest:.1f} s", flush=True)

        # (b) search on the full cube: all distinct queries; split into embed and the dense index
        queries = [question(rng, i) for i in range(args.queries + 20)]
        for q in queries[:20]:
            mem.search(q, 5)  # warm-up
        total, cpu, embed, index = [], [], [], []
        from magistral_kit.memory.embedding import one_blas_thread

        for q in queries[20:]:
            c0, t0 = time.process_time(), time.perf_counter()
            hits = mem.search(q, 5)
            total.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            assert len(hits) == 5
        for q in queries[20:]:
            t0 = time.perf_counter()
            vec = mem.embed([q + " again"])[0]
            t1 = time.perf_counter()
            with one_blas_thread():
                mem.dense_index.search(vec, 5)
            t2 = time.perf_counter()
            embed.append((t1 - t0) * 1000)
            index.append((t2 - t1) * 1000)
        result["search_10k"] = {**summary(total), "target_p50_ms": 20, "process_cpu": summary(cpu),
                                "embed_only": summary(embed), "dense_index_only": summary(index),
                                "dense_engine": mem.dense_index.kind}
        print("search", result["search_10k"], flush=True)

        # (a) the memory layer's cost per turn: search + add_many(3) (embedding + SQLite commit + dense index)
        per_turn, adds = [], []
        turn_cpu = []
        for i in range(args.turns):
            q = question(rng, 10_000 + i)
            items = [{"text": sentence(rng), "source": [f"s1-t{i}"], "kind": "extracted",
                      "meta": {"session": "s1", "turn": f"s1-t{i}"}} for _ in range(3)]
            c0, t0 = time.process_time(), time.perf_counter()
            mem.search(q, 5)
            t1 = time.perf_counter()
            mem.add_many(items)
            t2 = time.perf_counter()
            per_turn.append((t2 - t0) * 1000)
            turn_cpu.append((time.process_time() - c0) * 1000)
            adds.append((t2 - t1) * 1000)
        result["per_turn"] = {**summary(per_turn), "target_ms": 100, "process_cpu": summary(turn_cpu),
                              "add_many_3": summary(adds),
                              "cube_size": len(mem)}
        print("per turn", result["per_turn"], flush=True)

        t = time.perf_counter()
        mem.save()
        result["save_s"] = round(time.perf_counter() - t, 2)
        result["record_mb"] = round((mem.path / "memories.sqlite").stat().st_size / 2**20, 1)
        mem.close()
        t = time.perf_counter()
        mem = open_memory(root / "cube")
        result["reopen_s"] = round(time.perf_counter() - t, 2)
        mem.close()
        shutil.rmtree(root / "cube" / "dense")
        t = time.perf_counter()
        mem = open_memory(root / "cube")
        result["reopen_with_index_rebuild_s"] = round(time.perf_counter() - t, 2)
        result["rebuild_note"] = [n for n in mem.notes if "rebuilt" in n]
        mem.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["note"] = ("2 shared CPU cores: other processes ran beside this benchmark (see loadavg); "
                      "small embedding batches run on one torch thread (see magistral_kit/embedding.py)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    # every run also appends one line: on a shared machine one run alone says little
    line = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg": info["loadavg_start"],
            "search_p50_ms": result["search_10k"]["p50_ms"], "search_p95_ms": result["search_10k"]["p95_ms"],
            "search_cpu_p50_ms": result["search_10k"]["process_cpu"]["p50_ms"],
            "turn_p50_ms": result["per_turn"]["p50_ms"], "turn_p95_ms": result["per_turn"]["p95_ms"],
            "ingest_per_s": result["ingest"]["memories_per_s"],
            "rebuild_s": result["reopen_with_index_rebuild_s"]}
    with open(out.with_name(out.stem + "_history.jsonl"), "a") as fh:
        fh.write(json.dumps(line) + "\n")
    print(json.dumps(result, indent=1))


def markdown_table(result: dict) -> str:
    """README's memory-cost table (bench/report.py): per turn and search on the big cube, p50 / p95."""
    s, t, m = result["search_10k"], result["per_turn"], result["machine"]
    n = result["memories"]
    rows = [
        "| memory-layer step | p50 | p95 |",
        "|---|---|---|",
        f"| one turn: search (top 5) + add 3 memories (embedding, SQLite commit, dense index) | {t['p50_ms']:.1f} ms | "
        f"{t['p95_ms']:.1f} ms |",
        f"| search on {n:,} memories, query embedding included | {s['p50_ms']:.1f} ms | {s['p95_ms']:.1f} ms |",
        f"| … of which embedding the query | {s['embed_only']['p50_ms']:.1f} ms | {s['embed_only']['p95_ms']:.1f} ms |",
        f"| … of which the dense index ({s.get('dense_engine', 'qdrant')}) | {s['dense_index_only']['p50_ms']:.1f} ms | "
        f"{s['dense_index_only']['p95_ms']:.1f} ms |",
    ]
    load = ", ".join(f"{x:.1f}" for x in m.get("loadavg_start", []))
    return "\n".join(rows) + (
        f"\n\nIngesting {n:,} memories {result['ingest']['seconds']:.1f} s; reopening the cube "
        f"{result['reopen_s']:.2f} s, with a full index rebuild {result['reopen_with_index_rebuild_s']:.2f} s. "
        f"{m['cpu_model']}, {m['cpu_count']} cores (load average {load} at the start), "
        f"Python {m['python']} (`bench/results/memory_cost.json`).")


if __name__ == "__main__":
    main()
