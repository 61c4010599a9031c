"""Decontamination: drop training documents that copy or nearly copy an evaluation item.

A model that saw a test item while training reports a score that measures memory, not
transfer. This stage compares every training document with every evaluation text, exactly (on
a normalised form) and nearly (Jaccard similarity of character n-gram sets, candidates found by
MinHash LSH from ``datasketch`` and then verified on the real sets, so the LSH never decides
alone). Character n-grams need no tokenizer, so one setting works for every script. Each
dropped document becomes a ledger row with stage ``decontaminate`` and reason
``eval_contamination``, and names the evaluation item it matched.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from .contract import StageResult, split_by_mask

STAGE = "decontaminate"
REASON = "eval_contamination"

_NON_WORD = re.compile(r"[\W_]+")


@dataclass
class DecontaminateConfig:
    enabled: bool = True
    exact: bool = True
    near: bool = True
    threshold: float = 0.7  # verified Jaccard of character n-gram sets
    ngram: int = 5
    num_perm: int = 128
    # 32 bands x 4 rows: a pair at Jaccard 0.7 becomes an LSH candidate with p > 0.9998, so
    # the verification sees (nearly) every true match; the price is more candidates to verify.
    bands: int = 32
    rows: int = 4
    seed: int = 1
    min_chars: int = 8  # shorter normalised texts are matched exactly only

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"decontaminate.threshold must be in (0, 1], not {self.threshold}")
        if self.ngram < 1:
            raise ValueError(f"decontaminate.ngram must be >= 1, not {self.ngram}")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"decontaminate: bands x rows = {self.bands * self.rows} exceeds "
                f"num_perm = {self.num_perm}"
            )


def normalise_for_match(text: str) -> str:
    """NFKC, case-folded, punctuation and underscores to spaces, whitespace collapsed."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the normalised text (the whole text when it is shorter than n)."""
    return _shingles(normalise_for_match(text), n)


def _shingles(t: str, n: int) -> set[str]:
    if len(t) <= n:
        return {t} if t else set()
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def minhashes(shingle_sets: Sequence[set[str]], num_perm: int, seed: int) -> list[MinHash]:
    """One MinHash per shingle set, seeded (same input and seed, same signatures).

    Shingles are hashed with CRC-32 (C speed, the same on every platform) rather than
    datasketch's default SHA-1: the signatures only propose candidates, which are then verified
    on the real sets, so a faster hash costs no accuracy.
    """
    return MinHash.bulk(
        ([s.encode("utf-8") for s in sh] for sh in shingle_sets),
        num_perm=num_perm,
        seed=seed,
        hashfunc=zlib.crc32,
    )


def near_duplicate_pairs(
    texts: Sequence[str],
    threshold: float = 0.7,
    ngram: int = 5,
    num_perm: int = 128,
    bands: int = 32,
    rows: int = 4,
    seed: int = 1,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)`` with ``i < j`` whose character n-gram Jaccard is >= threshold.

    Exact duplicates after normalisation always pair; other pairs come from MinHash LSH
    candidates verified on the real shingle sets.
    """
    norm = [normalise_for_match(t) for t in texts]
    sets = [_shingles(t, ngram) for t in norm]
    pairs: dict[tuple[int, int], float] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(norm):
        if key in first:
            pairs[(first[key], i)] = 1.0
        else:
            first[key] = i
    idx = [i for i, s in enumerate(sets) if s]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    mhs = minhashes([sets[i] for i in idx], num_perm, seed)
    with lsh.insertion_session() as session:
        for i, mh in zip(idx, mhs, strict=True):
            session.insert(i, mh, check_duplication=False)
    for i, mh in zip(idx, mhs, strict=True):
        for j in lsh.query(mh):
            if j <= i or (i, j) in pairs:
                continue
            score = jaccard(sets[i], sets[j])
            if score >= threshold:
                pairs[(i, j)] = score
    return sorted((i, j, s) for (i, j), s in pairs.items())


def decontaminate(
    train: pa.Table,
    eval_texts: Sequence[str],
    config: DecontaminateConfig | None = None,
    eval_ids: Sequence[str] | None = None,
) -> StageResult:
    """Remove training documents that exactly or nearly match an evaluation text.

    ``train`` is a contract table (``DOCUMENT_SCHEMA``; ``doc_id``, ``source`` and ``text`` are
    required). ``eval_ids`` name the evaluation items in the ledger (default: their position).
    """
    config = config or DecontaminateConfig()
    config.validate()
    missing = [c for c in ("doc_id", "source", "text") if c not in train.column_names]
    if missing:
        raise ValueError(f"decontaminate: training table lacks column(s) {', '.join(missing)}")
    eval_texts = list(eval_texts)
    bad = [i for i, t in enumerate(eval_texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"decontaminate: eval_texts must be strings; item {bad[0]} is "
            f"{type(eval_texts[bad[0]]).__name__}"
        )
    ids = [str(i) for i in range(len(eval_texts))] if eval_ids is None else list(eval_ids)
    if len(ids) != len(eval_texts):
        raise ValueError(
            f"decontaminate: {len(ids)} eval_ids for {len(eval_texts)} eval_texts; "
            "give one id per text"
        )
    texts = [t or "" for t in train.column("text").to_pylist()]
    n = len(texts)
    keep = np.ones(n, dtype=bool)
    details: list[dict | None] = [None] * n
    kinds: Counter[str] = Counter()
    if config.enabled and eval_texts and n:
        _match(texts, eval_texts, ids, config, keep, details, kinds)
    reasons = [REASON] * n
    kept, rejected = split_by_mask(train, keep, STAGE, reasons, details)
    scores = [d["jaccard"] for d in details if d is not None]
    hist, edges = np.histogram(scores, bins=[0.0, 0.7, 0.8, 0.9, 0.95, 1.0 + 1e-9])
    result = StageResult(kept, rejected)
    result.metadata = {
        **result.summary(),
        "eval_items": len(eval_texts),
        "exact_matches": kinds["exact"],
        "near_matches": kinds["near"],
        "enabled": config.enabled,
        "threshold": config.threshold,
        "ngram": config.ngram,
        "num_perm": config.num_perm,
        "bands": config.bands,
        "rows": config.rows,
        "seed": config.seed,
        "jaccard_histogram": {
            f"{lo:.2f}-{min(hi, 1.0):.2f}": int(c)
            for lo, hi, c in zip(edges[:-1], edges[1:], hist, strict=True)
        },
    }
    return result


def _match(
    texts: list[str],
    eval_texts: list[str],
    ids: list[str],
    config: DecontaminateConfig,
    keep: np.ndarray,
    details: list[dict | None],
    kinds: Counter[str],
) -> None:
    eval_norm = [normalise_for_match(t) for t in eval_texts]
    train_norm = [normalise_for_match(t) for t in texts]
    exact_index: dict[str, int] = {}
    for j, t in enumerate(eval_norm):
        exact_index.setdefault(t, j)
    todo = []
    for i, t in enumerate(train_norm):
        j = exact_index.get(t) if config.exact else None
        if j is not None:
            keep[i] = False
            details[i] = {"matched_eval_id": ids[j], "jaccard": 1.0, "match": "exact"}
            kinds["exact"] += 1
        else:
            todo.append(i)
    if not config.near or not todo:
        return
    eval_sets = [_shingles(t, config.ngram) for t in eval_norm]
    usable = [j for j, t in enumerate(eval_norm) if len(t) >= config.min_chars]
    lsh = MinHashLSH(
        threshold=config.threshold, num_perm=config.num_perm, params=(config.bands, config.rows)
    )
    with lsh.insertion_session() as session:
        for j, mh in zip(
            usable,
            minhashes([eval_sets[j] for j in usable], config.num_perm, config.seed),
            strict=True,
        ):
            session.insert(j, mh, check_duplication=False)
    todo = [i for i in todo if len(train_norm[i]) >= config.min_chars]
    train_sets = [_shingles(train_norm[i], config.ngram) for i in todo]
    for i, sh, mh in zip(
        todo, train_sets, minhashes(train_sets, config.num_perm, config.seed), strict=True
    ):
        best_j, best = -1, 0.0
        for j in lsh.query(mh):
            score = jaccard(sh, eval_sets[j])
            if score > best or (score == best and j < best_j):
                best_j, best = j, score
        if best_j >= 0 and best >= config.threshold:
            keep[i] = False
            details[i] = {
                "matched_eval_id": ids[best_j],
                "jaccard": round(best, 4),
                "match": "near",
            }
            kinds["near"] += 1
