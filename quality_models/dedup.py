"""Exact and MinHash-LSH near-duplicate removal, per language.

Signatures are bit-for-bit the ones ``datasketch.MinHash`` computes (same permutations from
the same seed, same ``affine32`` scheme; a test checks it) given our shingle hash, but they are
computed for a whole batch of documents at once with numpy instead of one ``MinHash`` object per
document. The LSH step bands the signatures (``bands x rows``) and finds colliding bands by
sorting, as datatrove's bucket stage does: memory stays linear in the number of documents.

Clusters keep their size (``dup_cluster_size``, exact copies included) so ablations can
"rehydrate" (up-weight by cluster size) instead of dropping. The kept representative is chosen
deterministically (lowest ``doc_id`` by default).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex
from datasketch import MinHash

from .config import DedupConfig
from .contract import StageResult, content_hash, empty_rejected, rejected_rows

_WORD = regex.compile(r"[\p{L}\p{N}\p{M}]+")
_SPACE_OR_PUNCT = regex.compile(r"[\s\p{P}\p{S}]+")
_MASK32 = np.uint64(0xFFFFFFFF)
_POLY = np.uint64(0x01000193)  # FNV prime: combines token hashes into one shingle hash


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch's ``affine32`` scheme pre-mixes inputs."""
    h = h.astype(np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


@cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own permutation parameters for ``(num_perm, seed)``."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def combine_tokens(token_hashes: Sequence[int]) -> int:
    """Hash of one shingle from its token hashes (the scalar twin of the vectorised path)."""
    h = np.uint64(0)
    for t in token_hashes:
        h = (h * _POLY + np.uint64(t)) & _MASK32
    return int(h)


def _ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Vectorised polynomial hash of every n-gram of a 1-D uint64 token-hash array."""
    if len(tokens) == 0:
        return np.zeros(0, dtype=np.uint32)
    if len(tokens) <= n:
        return np.array([combine_tokens(tokens.tolist())], dtype=np.uint32)
    m = len(tokens) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h = (h * _POLY + tokens[j : j + m]) & _MASK32
    return np.unique(h.astype(np.uint32))


def shingle_text(text: str) -> str:
    return _SPACE_OR_PUNCT.sub(" ", text.lower()).strip()


def word_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingle_hashes(text: str, use_chars: bool, config: DedupConfig) -> np.ndarray:
    """The set of 32-bit shingle hashes of a document: word n-grams, or character n-grams for
    languages written without spaces (after lower-casing and removing punctuation)."""
    if use_chars:
        s = shingle_text(text).replace(" ", "")
        codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        return _ngram_hashes(codes, config.char_ngram)
    toks = word_tokens(text)
    codes = np.fromiter((zlib.crc32(t.encode()) for t in toks), dtype=np.uint64, count=len(toks))
    return _ngram_hashes(codes, config.word_ngram)


def signatures(
    texts: Sequence[str], use_chars: bool, config: DedupConfig, batch_shingles: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (n_docs x num_perm, uint32) and a mask of documents with shingles."""
    a, b = permutations(config.num_perm, config.seed)
    sig = np.full((len(texts), config.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    has = np.zeros(len(texts), dtype=bool)
    pending: list[np.ndarray] = []
    pending_idx: list[int] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if not pending:
            return
        lengths = np.array([len(p) for p in pending])
        hv = fmix32(np.concatenate(pending))[:, None]
        phv = hv * a[None, :] + b[None, :]  # uint32 wraparound = mod 2^32, as datasketch
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sig[pending_idx] = np.minimum.reduceat(phv, starts, axis=0)
        pending.clear()
        pending_idx.clear()
        size = 0

    for i, text in enumerate(texts):
        sh = shingle_hashes(text, use_chars, config)
        if len(sh) == 0:
            continue
        has[i] = True
        pending.append(sh)
        pending_idx.append(i)
        size += len(sh)
        if size >= batch_shingles:
            flush()
    flush()
    return sig, has


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)


def lsh_clusters(sig: np.ndarray, has: np.ndarray, config: DedupConfig) -> np.ndarray:
    """Cluster label (index of the cluster's smallest member) for every document."""
    n = len(sig)
    uf = _UnionFind(n)
    rng = np.random.default_rng(config.seed)
    mult = rng.integers(1, 2**63, size=config.rows, dtype=np.uint64) | np.uint64(1)
    idx = np.flatnonzero(has)
    for band in range(config.bands):
        cols = sig[idx, band * config.rows : (band + 1) * config.rows].astype(np.uint64)
        keys = (cols * mult[None, :]).sum(axis=1, dtype=np.uint64)  # wraps mod 2^64
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        same = np.flatnonzero(sk[1:] == sk[:-1])
        for j in same:
            x, y = idx[order[j]], idx[order[j + 1]]
            # guard against the (rare) 64-bit key collision of different bands
            if np.array_equal(sig[x, band * config.rows : (band + 1) * config.rows],
                              sig[y, band * config.rows : (band + 1) * config.rows]):  # fmt: skip
                uf.union(int(x), int(y))
    return np.array([uf.find(i) for i in range(n)])


def _pick(members: list[int], doc_ids: list[str], lengths: list[int], keep: str) -> int:
    if keep == "longest":
        return min(members, key=lambda i: (-lengths[i], doc_ids[i]))
    return min(members, key=lambda i: doc_ids[i])


def dedup_stage(table: pa.Table, config: DedupConfig, lang: str | None = None) -> StageResult:
    """Exact then near-duplicate removal over one language's documents."""
    texts = table.column("text").to_pylist()
    doc_ids = table.column("doc_id").to_pylist()
    lengths = [len(t) for t in texts]
    n = len(texts)
    hashes = [content_hash(t) for t in texts]
    groups = np.arange(n)
    # exact: same content hash -> one group
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        groups[i] = first.setdefault(h, i) if config.exact else i
    # near: LSH over the exact representatives' signatures, merged into the same groups
    use_chars = config.shingle == "char" or (lang in config.char_languages)
    est_jaccard = np.ones(n)
    if config.near and n > 1:
        reps = np.unique(groups)
        sig, has = signatures([texts[i] for i in reps], use_chars, config)
        labels = lsh_clusters(sig, has, config)
        rep_root = {int(reps[k]): int(reps[labels[k]]) for k in range(len(reps))}
        if config.verify_threshold is not None:
            for k, rep in enumerate(reps):
                root_k = int(labels[k])
                j = float(np.mean(sig[k] == sig[root_k]))
                if j < config.verify_threshold:
                    rep_root[int(rep)] = int(rep)
        groups = np.array([rep_root[int(g)] for g in groups])
        pos = {int(r): k for k, r in enumerate(reps)}
        for i in range(n):
            ki, kr = pos.get(int(groups[i])), pos.get(int(first.get(hashes[i], i)))
            if ki is not None and kr is not None:
                est_jaccard[i] = float(np.mean(sig[ki] == sig[kr]))
    clusters: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        clusters.setdefault(int(g), []).append(i)
    keep = np.zeros(n, dtype=bool)
    cluster_id = [""] * n
    cluster_size = np.ones(n, dtype=np.int32)
    reasons = [""] * n
    details: list[dict | None] = [None] * n
    for members in clusters.values():
        rep = _pick(members, doc_ids, lengths, config.keep)
        keep[rep] = True
        for i in members:
            cluster_id[i] = doc_ids[rep]
            cluster_size[i] = len(members)
            if i != rep:
                # removed by the exact pass (an identical twin came first) or identical to rep
                exact = first.get(hashes[i]) != i or hashes[i] == hashes[rep]
                reasons[i] = "exact_duplicate" if exact else "near_duplicate"
                details[i] = {"duplicate_of": doc_ids[rep], "cluster_size": len(members)}
                if not exact:
                    details[i]["est_jaccard"] = round(float(est_jaccard[i]), 3)
    table = _set(table, "content_hash", pa.array(hashes, pa.string()))
    table = _set(table, "dup_cluster", pa.array(cluster_id, pa.string()))
    table = _set(table, "dup_cluster_size", pa.array(cluster_size, pa.int32()))
    drop = np.flatnonzero(~keep)
    dropped = table.take(pa.array(drop, pa.int64()))
    rejected = (
        rejected_rows(dropped, "dedup", [reasons[i] for i in drop], [details[i] for i in drop])
        if len(drop)
        else empty_rejected()
    )
    kept = table.filter(pa.array(keep))
    sizes = np.array([len(m) for m in clusters.values()])
    meta = {
        "language": lang,
        "shingle": "char" if use_chars else "word",
        "ngram": config.char_ngram if use_chars else config.word_ngram,
        "num_perm": config.num_perm,
        "bands": config.bands,
        "rows": config.rows,
        "effective_threshold": round(config.effective_threshold, 4),
        "clusters_with_duplicates": int((sizes > 1).sum()) if len(sizes) else 0,
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
    }
    return StageResult(kept, rejected, meta)


def _set(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, array)


def _dedup_one(args: tuple[pa.Table, DedupConfig, str]) -> StageResult:
    return dedup_stage(*args)


def split_by_language(table: pa.Table) -> dict[str, pa.Table]:
    langs = sorted(set(table.column("lang").to_pylist()))
    return {lang: table.filter(pc.equal(table.column("lang"), lang)) for lang in langs}


def dedup_by_language(
    table: pa.Table, config: DedupConfig, workers: int = 1
) -> dict[str, StageResult]:
    """Run :func:`dedup_stage` for every language, in a process pool when ``workers > 1``."""
    parts = split_by_language(table)
    jobs = [(part, config, lang) for lang, part in parts.items()]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_dedup_one, jobs))
    else:
        results = [_dedup_one(j) for j in jobs]
    return dict(zip(parts, results, strict=True))
