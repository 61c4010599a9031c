"""Decontamination and split grouping on the gettext tasks, against exact all-pairs baselines run
in the same process.

    .venv/bin/python bench/decontamination.py [--sizes 2000,8000] [--repeat 2]

Rows: ``decontaminate`` (exact + MinHash LSH candidates verified on the real sets) against an
exact all-pairs scan (binary character 5-gram matrix, sparse product in chunks), on training
texts of the raw gettext pool against every evaluation text; and ``near_duplicate_pairs``
(the split grouping) against the same all-pairs scan on the source messages. The recall column
says how many of the baseline's matches the LSH path found (the baseline is exact, so it is the
truth); the ratio column is baseline time / method time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.feature_extraction.text import CountVectorizer  # noqa: E402

from quality_models.decontaminate import (  # noqa: E402
    DecontaminateConfig,
    char_shingles,
    decontaminate,
    near_duplicate_pairs,
    normalise_for_match,
)
from training.gettext_corpus import build_parallel_corpus  # noqa: E402
from training.tasks import (  # noqa: E402
    TaskConfig,
    build_tasks,
    classification_documents,
    eval_texts,
)


def best_of(repeat: int, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def all_pairs_matches(train: list[str], ev: list[str], threshold: float) -> set[int]:
    """Indices of training texts with an eval text at Jaccard >= threshold (or equal after
    normalisation), by brute force over every pair."""
    vec = CountVectorizer(analyzer=char_shingles, binary=True, dtype=np.int32).fit(train + ev)
    xe = vec.transform(ev)
    se = np.asarray(xe.sum(axis=1)).ravel()
    norm_ev = {normalise_for_match(t) for t in ev}
    hits = {i for i, t in enumerate(train) if normalise_for_match(t) in norm_ev}
    for start in range(0, len(train), 1000):
        xt = vec.transform(train[start : start + 1000])
        st = np.asarray(xt.sum(axis=1)).ravel()
        inter = (xt @ xe.T).toarray()
        jac = inter / np.maximum(st[:, None] + se[None, :] - inter, 1)
        hits |= {start + int(i) for i in np.flatnonzero(jac.max(axis=1) >= threshold)}
    return hits


def all_pairs_groups(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    vec = CountVectorizer(analyzer=char_shingles, binary=True, dtype=np.int32).fit(texts)
    x = vec.transform(texts)
    s = np.asarray(x.sum(axis=1)).ravel()
    norm = [normalise_for_match(t) for t in texts]
    pairs = set()
    for start in range(0, len(texts), 1000):
        inter = (x[start : start + 1000] @ x.T).toarray()
        jac = inter / np.maximum(s[start : start + 1000, None] + s[None, :] - inter, 1)
        for a, b in zip(*np.nonzero(jac >= threshold), strict=True):
            i = start + int(a)
            if i < b:
                pairs.add((i, int(b)))
    first: dict[str, int] = {}
    for i, key in enumerate(norm):
        if key in first:
            pairs.add((first[key], i))
        else:
            first[key] = i
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,8000")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    corpus = build_parallel_corpus(
        languages=["de", "ru", "ja", "zh"],
        domains=["postgres", "gtk", "wget", "apt"],
        progress=False,
    )
    task = build_tasks(
        corpus,
        TaskConfig(domains=("postgres", "gtk", "wget", "apt"), languages=("de", "ru", "ja", "zh")),
    )
    ids, ev = eval_texts(task)
    docs = classification_documents(task)
    cfg = DecontaminateConfig()
    print(f"eval texts: {len(ev)}; pool documents: {docs.num_rows}\n")
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        sub = docs.slice(0, min(n, docs.num_rows))
        train = sub.column("text").to_pylist()
        t_base, truth = best_of(
            args.repeat, lambda train=train: all_pairs_matches(train, ev, cfg.threshold)
        )
        t_lsh, res = best_of(args.repeat, lambda sub=sub: decontaminate(sub, ev, cfg, ids))
        position = {d: i for i, d in enumerate(sub.column("doc_id").to_pylist())}
        found = {position[d] for d in res.rejected.column("doc_id").to_pylist()}
        rows.append(("decontaminate", len(train), t_base, truth, t_lsh, found))
    texts = task.splits.column("text").to_pylist()
    threshold = task.config.near_dup_threshold
    t_base, truth = best_of(1, lambda: all_pairs_groups(texts, threshold))
    t_lsh, pairs = best_of(1, lambda: near_duplicate_pairs(texts, threshold))
    rows.append(("split grouping", len(texts), t_base, truth, t_lsh, {(i, j) for i, j, _ in pairs}))

    print("| task | n | method | seconds | matches | recall vs exact | speed ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, n, t_base, truth, t_lsh, found in rows:
        recall = len(found & truth) / len(truth) if truth else 1.0
        print(f"| {name} | {n} | exact all-pairs | {t_base:.2f} | {len(truth)} | 1.000 | 1.00 |")
        print(
            f"| {name} | {n} | MinHash LSH + verify | {t_lsh:.2f} | {len(found)} | "
            f"{recall:.3f} | {t_base / t_lsh:.2f} |"
        )


if __name__ == "__main__":
    main()
