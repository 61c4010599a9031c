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

Arms (each in a fresh child process, so peak memory is its own: the summed PSS of the
process and every child, Ray's workers included, sampled every 0.1 s):

* ``stage``: ``dedup_stage`` in one process on the whole table (the in-memory path);
* ``local``: the sharded pipeline on the local engine (shards, intermediates spilled to disk);
* ``ray1`` / ``ray2``: the sharded pipeline on a local Ray with 1 / 2 CPUs;
* ``datasketch``: ``MinHash.bulk`` + ``MinHashLSH`` (insertion session, then one query per
  document; a document is removed when an earlier one collides: no verification);
* ``datatrove`` (with ``--datatrove-python``, a throwaway venv's interpreter): datatrove's four
  MinHash stages, one task each, whitespace tokenizer (``bench/datatrove_minhash.py``).

docs/s per core divides by the workers. The corpus is generated once per size and kind into
Parquet (``--work``); the sharded arms read it in ``--batch-rows`` shards and write part files
(out of core); ``stage`` and ``datasketch`` read it whole. Times and peaks cover reading,
dedup and publishing the output; Ray's start-up is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = ("stage", "local", "ray1", "ray2", "datasketch")
WORKERS = {"stage": 1, "local": 1, "ray1": 1, "ray2": 2, "datasketch": 1, "datatrove": 1}


def corpus(n: int, kind: str, seed: int = 0, chunk: int = 1_000_000):
    """Yield ``(doc_ids, texts, family, planted)`` per chunk of at most ``chunk`` documents:
    ``family[i]`` is the global index of document i's planted original (itself for originals),
    ``planted`` lists ``(copy, original)`` global index pairs. Copies point into their own
    chunk, so memory stays bounded by one chunk."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:05d}" for i in range(50_000)], dtype=object)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8
    cum = np.cumsum(weights / weights.sum())
    for base in range(0, n, chunk):
        m = min(chunk, n - base)
        lengths = rng.integers(8, 21, size=m) if kind == "short" else np.full(m, 180)
        draws = np.searchsorted(cum, rng.random(int(lengths.sum())))
        offs = np.concatenate([[0], np.cumsum(lengths)])
        words = [draws[offs[i] : offs[i + 1]] for i in range(m)]
        role = rng.random(m)
        family = np.arange(m)
        planted = []
        for i in range(1, m):
            if role[i] < 0.33:
                j = int(family[int(rng.integers(0, i))])
                w = words[j].copy()
                if role[i] >= 0.03:  # a near copy (else an exact one)
                    if kind == "short":
                        w[-1] = int(rng.integers(0, len(vocab)))
                    else:
                        frac = (0.01, 0.03, 0.05, 0.1)[int(rng.integers(0, 4))]
                        pos = rng.choice(len(w), size=max(1, int(frac * len(w))), replace=False)
                        w[pos] = rng.integers(0, len(vocab), size=len(pos))
                words[i] = w
                family[i] = j
                planted.append((base + i, base + j))
        texts = [" ".join(vocab[w].tolist()) for w in words]
        del words
        ids = [f"{base + i:010d}" for i in range(m)]
        yield ids, texts, family + base, planted


def generate(n: int, kind: str, folder: Path) -> Path:
    """The corpus as Parquet (row groups of 100k; ``family`` travels as a pass-through column)
    and the planted pairs as ``planted.npy``, written once per size and kind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"{kind}-{n}.parquet"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    planted_all = []
    schema = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                        ("lang", pa.string()), ("family", pa.int64())])  # fmt: skip
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for ids, texts, family, planted in corpus(n, kind):
            t = pa.table({"doc_id": ids, "source": ["bench"] * len(ids), "text": texts,
                          "lang": ["en"] * len(ids), "family": family}, schema=schema)  # fmt: skip
            writer.write_table(t, row_group_size=100_000)
            planted_all += planted
    np.save(folder / f"{kind}-{n}.planted.npy", np.array(planted_all, dtype=np.int64))
    tmp.rename(path)
    return path


class PeakRSS:
    """Peak of the summed memory (PSS) of this process and all its descendants."""

    def __init__(self, every: float = 0.1):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        """Summed PSS (shared pages such as Ray's object store split between the processes
        that map them, so they count once); RSS where PSS cannot be read."""
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except Exception:  # noqa: BLE001 - a child that just ended, or no smaps
                try:
                    total += p.memory_info().rss
                except Exception:  # noqa: BLE001
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


def removals(out_dir: Path) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """``doc -> the kept doc it names`` and the near-duplicate ``(doc, named)`` pairs of an
    arm's output: govtune's published ledger, or datatrove's ``removed.jsonl``."""
    dup_of, named = {}, []
    if (out_dir / "removed.jsonl").is_file():
        for line in (out_dir / "removed.jsonl").read_text().splitlines():
            d = json.loads(line)
            if d["of"] is not None:
                dup_of[int(d["id"])] = int(d["of"])
                named.append((int(d["id"]), int(d["of"])))
        return dup_of, named
    from quality_models.storage import read_published

    rej = read_published(out_dir).rejected().select(["doc_id", "reason", "details"])
    for d, r, det in zip(rej.column("doc_id").to_pylist(), rej.column("reason").to_pylist(),
                         rej.column("details").to_pylist(), strict=True):  # fmt: skip
        o = json.loads(det)["duplicate_of"]
        dup_of[int(d)] = int(o)
        if r == "near_duplicate":
            named.append((int(d), int(o)))
    return dup_of, named


def quality(corpus_path: Path, out_dir: Path, threshold: float) -> dict:
    """Recall and precision of one arm's output against the planted truth."""
    import pyarrow.parquet as pq

    from quality_models.config import DedupConfig
    from quality_models.dedup import jaccard, shingle_sets

    cfg = DedupConfig(threshold=threshold)
    dup_of, named = removals(out_dir)
    family = np.asarray(pq.read_table(corpus_path, columns=["family"]).column("family"))
    planted = np.load(str(corpus_path).replace(".parquet", ".planted.npy"))
    rng = np.random.default_rng(1)
    sample = planted[rng.choice(len(planted), size=min(3000, len(planted)), replace=False)]
    rows = sorted(set(sample.ravel().tolist()))
    pf = pq.ParquetFile(corpus_path)
    texts = {}
    for rg in range(pf.num_row_groups):
        lo = rg * 100_000
        want = [r - lo for r in rows if lo <= r < lo + 100_000]
        if want:
            col = pf.read_row_group(rg, columns=["text"]).column("text")
            texts.update(zip([lo + w for w in want], col.take(want).to_pylist(), strict=True))
    sets = dict(zip(rows, shingle_sets([texts[r] for r in rows], False, cfg), strict=True))
    hit8 = hitt = n8 = nt = 0
    for a, b in sample.tolist():
        j = jaccard(sets[a], sets[b])
        same = dup_of.get(a, a) == dup_of.get(b, b)
        if j >= 0.8:
            n8, hit8 = n8 + 1, hit8 + same
        if j >= threshold:
            nt, hitt = nt + 1, hitt + same
    good = sum(family[d] == family[o] for d, o in named)
    return {
        "recall_j08": hit8 / n8 if n8 else float("nan"),
        "recall_thr": hitt / nt if nt else float("nan"),
        "precision": good / len(named) if named else float("nan"),
        "removed": len(dup_of),
    }


def run_arm(arm: str, corpus_path: Path, out_dir: Path, batch_rows: int) -> dict:
    """One arm in this (child) process: read the corpus, dedup, publish the output."""
    import pyarrow.parquet as pq

    from quality_models.config import DedupConfig
    from quality_models.storage import publish

    cfg = DedupConfig()
    n = pq.ParquetFile(corpus_path).metadata.num_rows
    if arm == "datasketch":
        return _datasketch(corpus_path, out_dir, cfg)
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
        if arm == "stage":  # the whole language in memory, one process
            from quality_models.dedup import dedup_stage

            table = pq.read_table(corpus_path)
            res = dedup_stage(table, cfg, "en")
            publish(out_dir, {"en": res.kept}, res.rejected, input_rows=n)
            del table, res
        else:  # out of core: Parquet shards in, part files out, one manifest
            from quality_models.dist_dedup import dedup_sharded, parquet_shards
            from quality_models.engine import LocalEngine, temporary_spill_dir

            if arm == "local":
                engine = LocalEngine(spill_dir=temporary_spill_dir(), partitions=4)
            shards = parquet_shards([corpus_path], batch_rows)
            dedup_sharded(shards, cfg, "en", engine, out=(str(out_dir), "en")).publish()
        secs = time.perf_counter() - t0
    if arm == "local":
        import shutil

        shutil.rmtree(engine.spill_dir, ignore_errors=True)
    return {"arm": arm, "docs": n, "seconds": secs, "peak_gib": mem.peak / 1024**3}


def _datasketch(corpus_path: Path, out_dir: Path, cfg) -> dict:
    """datasketch's bulk API: ``MinHash.bulk`` + ``MinHashLSH``; a document colliding with an
    earlier one is removed as its duplicate (the earliest root), nothing verified."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH

    from quality_models.contract import REJECTED_SCHEMA
    from quality_models.dedup import word_tokens
    from quality_models.storage import publish

    table = pq.read_table(corpus_path, columns=["doc_id", "text"])
    texts = table.column("text").to_pylist()
    ids = table.column("doc_id").to_pylist()
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

    removed = sorted(dup_of)
    rej = pa.table({"doc_id": [ids[i] for i in removed], "source": ["bench"] * len(removed),
                    "stage": ["dedup"] * len(removed), "reason": ["near_duplicate"] * len(removed),
                    "details": [json.dumps({"duplicate_of": ids[root(i)]}) for i in removed],
                    "lang": ["en"] * len(removed), "text": [""] * len(removed)},
                   schema=REJECTED_SCHEMA)  # fmt: skip
    publish(out_dir, {}, rej, input_rows=len(ids))
    return {"arm": "datasketch", "docs": len(ids), "seconds": secs, "peak_gib": mem.peak / 1024**3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--kinds", default="long,short")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="run datasketch only up to this many documents")  # fmt: skip
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--work", help="folder for the generated corpora (default: a temp dir)")
    parser.add_argument("--datatrove-python",
                        help="a venv's python with datatrove installed: adds the datatrove arm "
                        "(bench/datatrove_minhash.py) up to --baseline-max documents")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arm, path, out = args.child.split("|")
        print(json.dumps(run_arm(arm, Path(path), Path(out), args.batch_rows)))
        return
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="govtune-scale-"))
    rows = []
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "68719476736"}
    for kind in args.kinds.split(","):
        for n in map(int, args.sizes.split(",")):
            arms = args.arms.split(",") + (["datatrove"] if args.datatrove_python else [])
            for arm in arms:
                if arm in ("datasketch", "datatrove") and n > args.baseline_max:
                    continue
                path = generate(n, kind, work / "corpora")
                out = work / "out" / f"{kind}-{n}-{arm}"
                if arm == "datatrove":
                    script = str(Path(__file__).with_name("datatrove_minhash.py"))
                    cmd = [args.datatrove_python, script, str(path), str(out)]
                else:
                    cmd = [sys.executable, __file__, "--child", f"{arm}|{path}|{out}",
                           "--batch-rows", str(args.batch_rows)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if proc.returncode:
                    print(f"{arm} {kind} {n}: failed\n{proc.stderr[-1500:]}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r.update(kind=kind, arm=arm, docs=n)
                r.update(quality(path, out, 0.7))
                shutil.rmtree(out, ignore_errors=True)
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
