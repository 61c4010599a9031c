"""Dedup at scale: docs/s, peak memory and recall/precision on generated corpora with planted
near copies, for the local and the Ray engine with 1 and 2 workers, against datasketch's bulk
API in the same run.

    flock /tmp/govtune-heavy.lock .venv/bin/python bench/scale.py \
        [--sizes 100000,1000000] [--kinds long,short] [--arms ...] [--baseline-max 100000]

Corpora (seeded, numpy): documents of 8-20 words (``short``) or 180 words (``long``) drawn from
a 50k-word vocabulary with Zipf-like frequencies; 30% of the documents are near copies of an
earlier document (long: 1-10% of the words replaced; short: the last word replaced), 3% exact
copies. The planter's record is the truth: *recall* is the share of planted pairs with true
shingle Jaccard >= 0.8 (and >= the threshold) that end in one cluster, *precision* the share of
near-duplicate removals whose named kept document is of the same planted family (generated
documents share nothing by chance).

Arms (each in a fresh child process, so peak memory is its own: the sum of the RSS of the
process and every child, Ray's workers included, sampled every 0.1 s):

* ``stage``: ``dedup_stage`` in one process on the whole table (the in-memory path);
* ``local``: the sharded pipeline on the local engine (``batch_rows`` shards, spilled to disk);
* ``ray1`` / ``ray2``: the sharded pipeline on a local Ray with 1 / 2 CPUs;
* ``datasketch``: ``MinHash.bulk`` + ``MinHashLSH`` (insertion session, then one query per
  document; a document is removed when an earlier one collides: no verification).

docs/s per core divides by the workers. Times include reading nothing from disk: the corpus is
generated in the child before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = ("stage", "local", "ray1", "ray2", "datasketch")
WORKERS = {"stage": 1, "local": 1, "ray1": 1, "ray2": 2, "datasketch": 1}


def corpus(n: int, kind: str, seed: int = 0):
    """``(doc_ids, texts, family, planted)``: ``family[i]`` is the planted original of document
    i (itself for originals); ``planted`` lists ``(copy, original)`` index pairs."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:05d}" for i in range(50_000)], dtype=object)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8
    weights /= weights.sum()
    cum = np.cumsum(weights)
    lengths = rng.integers(8, 21, size=n) if kind == "short" else np.full(n, 180)
    draws = np.searchsorted(cum, rng.random(int(lengths.sum())))
    offs = np.concatenate([[0], np.cumsum(lengths)])
    role = rng.random(n)
    family = np.arange(n)
    words = [draws[offs[i] : offs[i + 1]] for i in range(n)]
    planted = []
    for i in range(1, n):
        if role[i] < 0.33:
            j = int(rng.integers(0, i))
            j = int(family[j])
            w = words[j].copy()
            if role[i] >= 0.03:  # near copy (else exact)
                if kind == "short":
                    w[-1] = int(rng.integers(0, len(vocab)))
                else:
                    frac = (0.01, 0.03, 0.05, 0.1)[int(rng.integers(0, 4))]
                    pos = rng.choice(len(w), size=max(1, int(frac * len(w))), replace=False)
                    w[pos] = rng.integers(0, len(vocab), size=len(pos))
            words[i] = w
            family[i] = j
            planted.append((i, j))
    texts = [" ".join(vocab[w].tolist()) for w in words]
    ids = [f"{i:010d}" for i in range(n)]
    return ids, texts, family, planted


class PeakRSS:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self, every: float = 0.1):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a child that just ended
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.every)

    def __enter__(self):
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def _quality(ids, texts, family, planted, cluster_of, removed_named, cfg):
    """Recall of planted pairs (true J >= 0.8 and >= threshold) and family precision."""
    from quality_models.dedup import jaccard, shingle_sets

    rng = np.random.default_rng(1)
    sample = [planted[k] for k in rng.choice(len(planted), size=min(3000, len(planted)),
                                             replace=False)]  # fmt: skip
    sets = shingle_sets([texts[i] for p in sample for i in p], False, cfg)
    hit8 = hitt = n8 = nt = 0
    for k, (a, b) in enumerate(sample):
        j = jaccard(sets[2 * k], sets[2 * k + 1])
        same = cluster_of(a) == cluster_of(b)
        if j >= 0.8:
            n8 += 1
            hit8 += same
        if j >= cfg.threshold:
            nt += 1
            hitt += same
    index = {d: i for i, d in enumerate(ids)} if removed_named else {}
    good = sum(family[index[d]] == family[index[o]] for d, o in removed_named)
    return {
        "recall_j08": hit8 / n8 if n8 else float("nan"),
        "recall_thr": hitt / nt if nt else float("nan"),
        "precision": good / len(removed_named) if removed_named else float("nan"),
    }


def run_arm(arm: str, n: int, kind: str, batch_rows: int) -> dict:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import pyarrow as pa

    from quality_models.config import DedupConfig
    from quality_models.contract import documents_from_records

    cfg = DedupConfig()
    ids, texts, family, planted = corpus(n, kind)
    if arm == "datasketch":
        return _datasketch(ids, texts, family, planted, cfg)
    table = documents_from_records(
        {"doc_id": d, "source": "bench", "text": t, "lang": "en"}
        for d, t in zip(ids, texts, strict=True)
    )
    del texts
    engine = None
    if arm.startswith("ray"):  # Ray's start-up (a few seconds) is not timed
        import ray

        from quality_models.engine import RayEngine

        cpus = 1 if arm == "ray1" else 2
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=2 * 1024**3)  # fmt: skip
        engine = RayEngine(partitions=2 * cpus)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if arm == "stage":
            from quality_models.dedup import dedup_stage

            res = dedup_stage(table, cfg, "en")
        else:
            from quality_models.dist_dedup import dedup_sharded
            from quality_models.engine import LocalEngine, temporary_spill_dir

            if arm == "local":
                engine = LocalEngine(spill_dir=temporary_spill_dir(), partitions=4)
            shards = [table.slice(lo, batch_rows) for lo in range(0, n, batch_rows)]
            del table
            res = dedup_sharded(shards, cfg, "en", engine).to_stage_result()
        secs = time.perf_counter() - t0
    kept = res.kept.column("doc_id").to_pylist()
    rej = res.rejected
    dup_of = {}
    import json as _json

    named = []
    for d, r, det in zip(rej.column("doc_id").to_pylist(), rej.column("reason").to_pylist(),
                         rej.column("details").to_pylist(), strict=True):  # fmt: skip
        o = _json.loads(det)["duplicate_of"]
        dup_of[d] = o
        if r == "near_duplicate":
            named.append((d, o))
    del kept, pa
    texts = corpus(n, kind)[1]
    q = _quality(ids, texts, family, planted, lambda i: dup_of.get(ids[i], ids[i]), named, cfg)
    return {"arm": arm, "docs": n, "kind": kind, "seconds": secs, "removed": rej.num_rows,
            "peak_gib": mem.peak / 1024**3, **q}  # fmt: skip


def _datasketch(ids, texts, family, planted, cfg) -> dict:
    from datasketch import MinHash, MinHashLSH

    from quality_models.dedup import word_tokens

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        sets = []
        for t in texts:
            toks = word_tokens(t)
            sets.append([" ".join(toks[j : j + 5]).encode() for j in range(max(1, len(toks) - 4))])
        hashes = MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed)
        lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
        with lsh.insertion_session() as session:
            for i, m in enumerate(hashes):
                session.insert(i, m)
        dup_of = {}
        for i, m in enumerate(hashes):
            earlier = [k for k in lsh.query(m) if k < i]
            if earlier:
                dup_of[i] = min(earlier)
        secs = time.perf_counter() - t0

    def root(i):
        while i in dup_of:
            i = dup_of[i]
        return i

    named = [(ids[i], ids[root(i)]) for i in dup_of]
    q = _quality(ids, texts, family, planted, lambda i: root(i), named, cfg)
    return {"arm": "datasketch", "docs": len(ids), "seconds": secs, "removed": len(dup_of),
            "peak_gib": mem.peak / 1024**3, **q}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--kinds", default="long,short")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="run datasketch only up to this many documents")  # fmt: skip
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arm, n, kind = args.child.split(":")
        print(json.dumps(run_arm(arm, int(n), kind, args.batch_rows)))
        return
    rows = []
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "68719476736"}
    for kind in args.kinds.split(","):
        for n in map(int, args.sizes.split(",")):
            for arm in args.arms.split(","):
                if arm == "datasketch" and n > args.baseline_max:
                    continue
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", f"{arm}:{n}:{kind}",
                     "--batch-rows", str(args.batch_rows)],
                    capture_output=True, text=True, env=env, check=False,
                )  # fmt: skip
                if proc.returncode:
                    print(f"{arm} {kind} {n}: failed\n{proc.stderr[-1500:]}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["kind"] = kind
                rows.append(r)
                print(_line(r, rows), flush=True)
    print("\n" + _table(rows))


def _line(r, rows) -> str:
    rate = r["docs"] / r["seconds"]
    return (f"{r['kind']:>5} {r['docs']:>9,} {r['arm']:>10}: {rate:9.0f} docs/s "
            f"({rate / WORKERS[r['arm']]:.0f}/core), peak {r['peak_gib']:.2f} GiB, "
            f"recall(J>=0.8) {r['recall_j08']:.3f}, precision {r['precision']:.3f}")  # fmt: skip


def _table(rows) -> str:
    head = ("| corpus | docs | arm | workers | docs/s | docs/s per core | × datasketch | "
            "peak GiB | recall J≥0.8 | recall J≥0.7 | precision |")  # fmt: skip
    out = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {(r["kind"], r["docs"]): r["docs"] / r["seconds"] for r in rows
            if r["arm"] == "datasketch"}  # fmt: skip
    for r in rows:
        rate = r["docs"] / r["seconds"]
        b = base.get((r["kind"], r["docs"]))
        ratio = f"{rate / WORKERS[r['arm']] / b:.2f}" if b else ""
        out.append(f"| {r['kind']} | {r['docs']:,} | {r['arm']} | {WORKERS[r['arm']]} | "
                   f"{rate:.0f} | {rate / WORKERS[r['arm']]:.0f} | {ratio} | "
                   f"{r['peak_gib']:.2f} | {r['recall_j08']:.3f} | {r['recall_thr']:.3f} | "
                   f"{r['precision']:.3f} |")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    main()
