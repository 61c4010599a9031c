"""Throughput of the governance stages against the raw library calls, in one process.

    .venv/bin/python bench/governance.py [--repeat 3] [--mem-docs 1000000]

Rows: docs/s of each stage on the demo corpus; the language-ID stage ÷ raw fastText ``predict``
on the same (newline-free) texts; MinHash dedup ÷ a plain per-document ``datasketch`` loop
(``MinHash`` + ``update_batch`` + ``MinHashLSH`` insert/query); the process pool across
languages ÷ one process; and the peak RSS of dedup over ``--mem-docs`` generated short documents
(measured in a child process, nothing written to disk).

Dedup at scale (100k-10M documents, both engines, 1 and 2 workers, recall/precision against
planted copies, datasketch's bulk API and datatrove's MinHash pipeline as baselines) is
``bench/scale.py``; datatrove runs there from a throwaway venv (it needs ``xxhash<4``, spacy,
orjson, regex and tokenizers).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality_models.config import DedupConfig, load_governance_config  # noqa: E402
from quality_models.dedup import dedup_by_language, dedup_stage, word_tokens  # noqa: E402
from quality_models.demo_corpus import build_demo_corpus  # noqa: E402
from quality_models.heuristics import quality_stage  # noqa: E402
from quality_models.langid import language_id_stage, load_lid_model  # noqa: E402
from quality_models.normalize import normalize_stage  # noqa: E402
from quality_models.sources import ingest_sources  # noqa: E402


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def paired_best(repeat: int, baseline, candidate) -> tuple[float, float]:
    """Best time of each, measured alternately so that load on the machine hits both alike."""
    base, cand = [], []
    for _ in range(repeat):
        base.append(best_of(1, baseline))
        cand.append(best_of(1, candidate))
    return min(base), min(cand)


def datasketch_loop(texts: list[str], cfg: DedupConfig) -> set[int]:
    """The plain per-document way: one MinHash per document, LSH insert then query."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    dups = set()
    for i, text in enumerate(texts):
        toks = word_tokens(text)
        shingles = {" ".join(toks[j : j + 5]).encode() for j in range(max(1, len(toks) - 4))}
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        m.update_batch(list(shingles))
        if lsh.query(m):
            dups.add(i)
        lsh.insert(str(i), m)
    return dups


def synthetic_short_docs(n: int, seed: int = 0) -> list[str]:
    """Short generated documents (8–20 words from a 5k-word vocabulary), 10% near copies."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    docs = []
    for i in range(n):
        if i > 10 and rng.random() < 0.1:
            words = docs[int(rng.integers(0, i))].split()
            words[int(rng.integers(0, len(words)))] = str(vocab[int(rng.integers(0, 5000))])
            docs.append(" ".join(words))
        else:
            docs.append(" ".join(vocab[rng.integers(0, 5000, size=int(rng.integers(8, 21)))]))
    return docs


def memory_child(n: int) -> None:
    from quality_models.contract import documents_from_records

    texts = synthetic_short_docs(n)
    table = documents_from_records(
        {"doc_id": f"{i:09d}", "source": "synthetic", "text": t, "lang": "en"}
        for i, t in enumerate(texts)
    )
    del texts
    t = time.perf_counter()
    res = dedup_stage(table, DedupConfig(), "en")
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    out = {"docs": n, "removed": res.rejected.num_rows, "seconds": secs, "peak_gib": peak}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mem-docs", type=int, default=1_000_000)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    config = load_governance_config(None)
    with tempfile.TemporaryDirectory() as tmp:
        build_demo_corpus(tmp, seed=0)
        raw = ingest_sources([Path(tmp) / "sources"], config.ingest, namespace="demo")
    norm = normalize_stage(raw.kept)
    lid = language_id_stage(norm.kept, config)
    texts = norm.kept.column("text").to_pylist()
    flat = [t.replace("\n", " ") for t in texts]
    model = load_lid_model(None)
    rows = []

    def row(name, n, secs, base=None, note=""):
        rate = n / secs
        ratio = f"{rate / base:.2f}x" if base else ""
        rows.append((name, n, rate, ratio, note))
        return rate

    t_norm = best_of(args.repeat, lambda: normalize_stage(raw.kept))
    row("normalize", raw.kept.num_rows, t_norm)
    t_raw, t_lid = paired_best(
        args.repeat, lambda: model.predict(flat, k=1), lambda: language_id_stage(norm.kept, config)
    )
    raw_rate = row("raw fastText predict (baseline)", len(flat), t_raw)
    row("language_id stage", len(flat), t_lid, raw_rate, "target >= 0.90x raw fastText")

    big = lid.kept.column("text").to_pylist()
    t_ds = best_of(1, lambda: datasketch_loop(big, config.dedup))
    ds_rate = row("datasketch per-document loop (baseline)", len(big), t_ds)
    t_ours = best_of(args.repeat, lambda: dedup_by_language(lid.kept, config.dedup, workers=1))
    row("dedup stage, 1 process", len(big), t_ours, ds_rate, "target >= 2x datasketch loop")
    t_pool = best_of(args.repeat, lambda: dedup_by_language(lid.kept, config.dedup, workers=2))
    row("dedup stage, 2 processes", len(big), t_pool, ds_rate, "pool start-up included")
    t_q = best_of(args.repeat, lambda: quality_stage(lid.kept, config))
    row("quality rules", lid.kept.num_rows, t_q)

    print(f"\ngovernance stages on the demo corpus ({raw.kept.num_rows} documents), "
          f"best of {args.repeat}\n")  # fmt: skip
    print(f"{'stage':<42} {'docs':>7} {'docs/s':>10} {'ratio':>7}  note")
    for name, n, rate, ratio, note in rows:
        print(f"{name:<42} {n:>7} {rate:>10.0f} {ratio:>7}  {note}")

    if args.mem_docs:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(args.mem_docs)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            print(f"\nmemory run failed: {proc.stderr[-2000:]}")
        else:
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"\ndedup of {m['docs']:,} generated short documents: {m['seconds']:.0f} s "
                f"({m['docs'] / m['seconds']:.0f} docs/s), {m['removed']:,} removed, "
                f"peak RSS {m['peak_gib']:.2f} GiB (target <= 4 GiB)"
            )


if __name__ == "__main__":
    random.seed(0)
    main()
