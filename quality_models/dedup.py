"""Exact and MinHash-LSH near-duplicate removal, per language, verified against kept copies.

Signatures are bit-for-bit the ones ``datasketch.MinHash`` computes (same permutations from
the same seed, same ``affine32`` scheme; a test checks it) given our shingle hash, but they are
computed for a whole batch of documents at once with numpy instead of one ``MinHash`` object per
document. The LSH step bands the signatures (``bands x rows``) and finds colliding bands by
sorting, as datatrove's bucket stage does: memory stays linear in the number of documents.

LSH collisions chain: A collides with B, B with C, and a union-find over every collision puts
documents that share nothing into one cluster. So the connected components of the collision
graph are only candidates; each is split greedily around kept representatives in keep order
(:func:`split_component`), and a document is removed only as the duplicate of a kept document
whose Jaccard to it (MinHash estimate or true shingle Jaccard, ``DedupConfig.similarity``) is
at least ``DedupConfig.threshold``.

The steps are small pure functions over arrays (:func:`signatures`, :func:`band_keys`,
:func:`candidate_pairs`, :func:`components`, :func:`assign_representatives`), so a distributed
engine can run them shard by shard and component by component; :func:`dedup_stage` composes
them in one process. Clusters keep their size (``dup_cluster_size``, exact copies included) so
ablations can "rehydrate" (up-weight by cluster size) instead of dropping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .config import DedupConfig
from .contract import StageResult, content_hash, empty_rejected, rejected_rows
from .shingles import (  # noqa: F401 - re-exported: the scalar twins the tests check against
    combine_tokens,
    fmix32,
    minhash,
    permutations,
    shingle_batch,
    token_hash,
    unique_sets,
    word_tokens,
)

_SPACE_OR_PUNCT = regex.compile(r"[\s\p{P}\p{S}]+")


def shingle_text(text: str) -> str:
    return _SPACE_OR_PUNCT.sub(" ", text.lower()).strip()


def shingle_hashes(text: str, use_chars: bool, config: DedupConfig) -> np.ndarray:
    """The set of 32-bit shingle hashes of a document (sorted, unique): word n-grams, or
    character n-grams for languages written without spaces (after lower-casing and removing
    punctuation). The same hashes :func:`signatures` computes in bulk
    (:mod:`quality_models.shingles`)."""
    hashes, _ = shingle_batch([text], use_chars, config.word_ngram, config.char_ngram)
    return np.unique(hashes)


def shingle_sets(texts: Sequence[str] | pa.Array, use_chars: bool, config: DedupConfig):
    """:func:`shingle_hashes` of many documents at once."""
    hashes, offsets = shingle_batch(texts, use_chars, config.word_ngram, config.char_ngram)
    return unique_sets(hashes, offsets)


def signatures(
    texts: Sequence[str] | pa.Array, use_chars: bool, config: DedupConfig, batch_docs: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (n_docs x num_perm, uint32) and a mask of documents with shingles,
    computed a batch of documents at a time (:func:`quality_models.shingles.minhash`)."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    n = len(arr)
    sig = np.empty((n, config.num_perm), dtype=np.uint32)
    has = np.zeros(n, dtype=bool)
    for lo in range(0, n, batch_docs):
        part = arr.slice(lo, batch_docs)
        hashes, offsets = shingle_batch(part, use_chars, config.word_ngram, config.char_ngram)
        s, h = minhash(hashes, offsets, config.num_perm, config.seed)
        sig[lo : lo + len(part)] = s
        has[lo : lo + len(part)] = h
    return sig, has


Similarity = Callable[[int, np.ndarray], np.ndarray]
"""``similarity(r, idx)``: the Jaccard between unit ``r`` and each unit of ``idx`` (floats)."""

_NO_PAIRS = np.zeros((0, 2), dtype=np.int64)


def band_keys(sig: np.ndarray, config: DedupConfig) -> np.ndarray:
    """One 64-bit key per band and document (``bands x n``, uint64): a seeded linear hash of the
    band's ``rows`` signature values, so a band is compared as one number. Keys of different
    bands can collide (probability ~2^-64 per pair); :func:`candidate_pairs` re-checks."""
    rng = np.random.default_rng(config.seed)
    mult = rng.integers(1, 2**63, size=config.rows, dtype=np.uint64) | np.uint64(1)
    keys = np.empty((config.bands, len(sig)), dtype=np.uint64)
    for band in range(config.bands):
        cols = sig[:, band * config.rows : (band + 1) * config.rows].astype(np.uint64)
        keys[band] = (cols * mult[None, :]).sum(axis=1, dtype=np.uint64)  # wraps mod 2^64
    return keys


def candidate_pairs(sig: np.ndarray, has: np.ndarray, config: DedupConfig) -> np.ndarray:
    """LSH candidate edges between rows of ``sig`` (``k x 2`` int64, ``i < j``, sorted, unique).

    Per band the keys are sorted (datatrove's bucket stage) and each document is joined to the
    next one with the same band: a bucket of ``m`` documents gives ``m - 1`` edges (a path),
    not ``m^2 / 2``, which connects it just the same and keeps memory linear. Every edge is a
    real collision (the full band is compared). Rows without shingles (``has`` false) never
    pair: their signatures are all the same sentinel."""
    idx = np.flatnonzero(has)
    if len(idx) < 2:
        return _NO_PAIRS
    keys = band_keys(sig[idx], config)
    found = []
    for band in range(config.bands):
        order = np.argsort(keys[band], kind="stable")
        sk = keys[band][order]
        j = np.flatnonzero(sk[1:] == sk[:-1])
        if len(j) == 0:
            continue
        x, y = idx[order[j]], idx[order[j + 1]]
        cols = slice(band * config.rows, (band + 1) * config.rows)
        same = (sig[x, cols] == sig[y, cols]).all(axis=1)
        found.append(np.stack([x[same], y[same]], axis=1))
    if not found:
        return _NO_PAIRS
    pairs = np.sort(np.concatenate(found).astype(np.int64), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else _NO_PAIRS


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by ``pairs``; the label of a node is the
    smallest node index of its component (so labels do not depend on the edge order)."""
    if len(pairs) == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)
    )
    _, lab = connected_components(graph, directed=False)
    first = np.full(lab.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(n, dtype=np.int64))
    return first[lab]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted, unique shingle-hash sets (0 when both are empty)."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def signature_similarity(sig: np.ndarray) -> Similarity:
    """MinHash estimate: the share of equal signature slots (one vectorised row comparison)."""

    def similarity(r: int, idx: np.ndarray) -> np.ndarray:
        return (sig[idx] == sig[r]).mean(axis=1)

    return similarity


def shingle_similarity(sets: Mapping[int, np.ndarray] | Sequence[np.ndarray]) -> Similarity:
    """True Jaccard of the shingle-hash sets (sorted, unique; as :func:`shingle_hashes` gives):
    the members' sets are concatenated and looked up in the representative's at once."""

    def similarity(r: int, idx: np.ndarray) -> np.ndarray:
        a = sets[int(r)]
        parts = [sets[int(i)] for i in idx]
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        if len(a) == 0 or sizes.sum() == 0:
            return np.zeros(len(idx))
        cat = np.concatenate(parts)
        pos = np.minimum(np.searchsorted(a, cat), len(a) - 1)
        hit = a[pos] == cat
        owner = np.repeat(np.arange(len(idx)), sizes)
        inter = np.bincount(owner, weights=hit, minlength=len(idx))
        union = len(a) + sizes - inter
        return np.divide(inter, union, out=np.zeros(len(idx)), where=union > 0)

    return similarity


def split_component(
    members: np.ndarray, similarity: Similarity, threshold: float, n_fixed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split one LSH component around kept representatives, greedily in ``members``' order
    (keep priority): the first unassigned member is kept, every unassigned member with
    Jaccard >= ``threshold`` to it is assigned to it, repeat. Collisions chain (A~B, B~C,
    C~D...), so a component can hold documents that share nothing; this never removes a
    document unless the kept one it names is itself near it.

    Returns ``(rep, jac)`` aligned with ``members``: the kept member each one is assigned to
    (itself when kept) and its Jaccard to it (1.0 for the kept ones).

    The first ``n_fixed`` members are kept already (an incremental run's earlier generations):
    each is a representative, in order, and none of them is ever assigned to another."""
    m = len(members)
    rep = np.array(members, dtype=np.int64, copy=True)
    jac = np.ones(m)
    open_ = np.ones(m, dtype=bool)
    open_[:n_fixed] = False
    for k in range(m):
        if k >= n_fixed and not open_[k]:
            continue  # assigned to an earlier representative
        open_[k] = False
        cand = np.flatnonzero(open_)
        if not len(cand):
            break
        s = similarity(int(members[k]), members[cand])
        near = s >= threshold
        hit = cand[near]
        rep[hit] = members[k]
        jac[hit] = s[near]
        open_[hit] = False
    return rep, jac


def assign_representatives(
    labels: np.ndarray,
    similarity: Similarity,
    threshold: float,
    priority: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_component` over every component of ``labels`` with more than one member.

    ``priority``: lower is kept first (default: the index, so callers that number units in
    keep order need not pass it). Returns ``(rep, jac)`` per unit: the index of the kept unit
    it is assigned to (itself when kept) and the Jaccard to it."""
    labels = np.asarray(labels)
    n = len(labels)
    rep = np.arange(n, dtype=np.int64)
    jac = np.ones(n)
    if n < 2:
        return rep, jac
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(counts[inverse] > 1)
    if len(multi) == 0:
        return rep, jac
    prio = multi if priority is None else np.asarray(priority)[multi]
    order = multi[np.lexsort((prio, inverse[multi]))]
    lab = inverse[order]
    for block in np.split(order, np.flatnonzero(lab[1:] != lab[:-1]) + 1):
        rep[block], jac[block] = split_component(block, similarity, threshold)
    return rep, jac


def keep_order(doc_ids: Sequence[str], lengths: Sequence[int], keep: str) -> np.ndarray:
    """Document indices, the one to keep first: by ``doc_id`` (``lowest_doc_id``) or by length,
    longest first, then ``doc_id`` (``longest``). It depends on the documents, never on their
    row order (doc_ids are unique after ingest; equal ones fall back to row order)."""
    ids = doc_ids if isinstance(doc_ids, (pa.Array, pa.ChunkedArray)) else pa.array(doc_ids)
    cols = {"doc_id": ids.cast(pa.string())}
    keys = [("doc_id", "ascending")]
    if keep == "longest":
        cols = {"length": pa.array(np.asarray(lengths, dtype=np.int64)), **cols}
        keys = [("length", "descending"), *keys]
    # Arrow sorts UTF-8 bytes, which is code point order (Python's), and stably
    order = pc.sort_indices(pa.table(cols), sort_keys=keys)
    return np.asarray(order, dtype=np.int64)


def exact_units(
    hashes: Sequence[str], order: np.ndarray, exact: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Group identical texts into units numbered in keep order. Returns ``unit_of`` (the unit of
    every document) and ``unit_doc`` (each unit's first document in ``order``: the copy kept if
    the unit is). Without ``exact`` every document is its own unit."""
    unit_of = np.empty(len(hashes), dtype=np.int64)
    unit_doc: list[int] = []
    seen: dict[object, int] = {}
    for i in order.tolist():
        key = hashes[i] if exact else i
        u = seen.get(key)
        if u is None:
            u = seen[key] = len(unit_doc)
            unit_doc.append(i)
        unit_of[i] = u
    return unit_of, np.array(unit_doc, dtype=np.int64)


def near_representatives(
    texts: Sequence[str] | pa.Array, use_chars: bool, config: DedupConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Signatures -> LSH candidate pairs -> components -> verified split, over ``texts`` given in
    keep order. Returns ``(rep, jac, stats)`` per text (as :func:`assign_representatives`)."""
    n = len(texts)
    sig, has = signatures(texts, use_chars, config)
    pairs = candidate_pairs(sig, has, config)
    labels = components(n, pairs)
    sizes = np.bincount(labels, minlength=n)
    if config.similarity == "shingles":
        in_multi = np.flatnonzero(sizes[labels] > 1)
        arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts)
        picked = shingle_sets(arr.take(pa.array(in_multi, pa.int64())), use_chars, config)
        sets = dict(zip(in_multi.tolist(), picked, strict=True))
        similarity = shingle_similarity(sets)
    else:
        similarity = signature_similarity(sig)
    rep, jac = assign_representatives(labels, similarity, config.threshold)
    kept_per_component = np.bincount(labels[rep == np.arange(n)], minlength=n)
    stats = {
        "candidate_pairs": int(len(pairs)),
        "components_with_duplicates": int((sizes > 1).sum()),
        "largest_component": int(sizes.max()) if n else 0,
        "components_split": int((kept_per_component > 1).sum()),
    }
    return rep, jac, stats


def dedup_stage(table: pa.Table, config: DedupConfig, lang: str | None = None) -> StageResult:
    """Exact then verified near-duplicate removal over one language's documents.

    Identical texts (same ``content_hash``) form a unit; the near pass runs over one copy per
    unit. A removed document always names in ``duplicate_of`` a kept document: its identical
    twin (``exact_duplicate``), or one whose Jaccard to it is at least ``config.threshold``
    (``near_duplicate``, with that Jaccard as ``est_jaccard``). The twins of a unit that is a
    near-duplicate point to the same kept document. ``dup_cluster`` is the kept document's
    ``doc_id`` and ``dup_cluster_size`` the size of its cluster, exact copies included.
    Columns beyond the contract pass through untouched."""
    config.validate()
    text_col = table.column("text").combine_chunks()
    texts = text_col.to_pylist()
    doc_col = table.column("doc_id").combine_chunks()
    doc_ids = doc_col.to_pylist()
    n = len(texts)
    lengths = np.asarray(pc.utf8_length(text_col), dtype=np.int64) if n else np.zeros(0, np.int64)
    hashes = [content_hash(t) for t in texts]
    unit_of, unit_doc = exact_units(hashes, keep_order(doc_col, lengths, config.keep), config.exact)
    use_chars = config.shingle == "char" or (lang in config.char_languages)
    n_units = len(unit_doc)
    rep_unit, jac_unit = np.arange(n_units, dtype=np.int64), np.ones(n_units)
    stats = {"candidate_pairs": 0, "components_with_duplicates": 0, "largest_component": 1,
             "components_split": 0}  # fmt: skip
    if config.near and n_units > 1:
        rep_unit, jac_unit, stats = near_representatives(
            text_col.take(pa.array(unit_doc, pa.int64())), use_chars, config
        )
    final = unit_doc[rep_unit[unit_of]] if n else np.zeros(0, dtype=np.int64)  # kept doc
    keep = final == np.arange(n)
    size = np.bincount(final, minlength=n)
    reasons = [""] * n
    details: list[dict | None] = [None] * n
    near_j: list[float] = []
    for i in np.flatnonzero(~keep).tolist():
        r = int(final[i])
        info: dict = {"duplicate_of": doc_ids[r], "cluster_size": int(size[r])}
        u = int(unit_of[i])
        if rep_unit[u] == u:  # an identical twin of the kept copy
            reasons[i] = "exact_duplicate"
        else:
            reasons[i] = "near_duplicate"
            info["est_jaccard"] = round(float(jac_unit[u]), 4)
            info["similarity"] = config.similarity
            near_j.append(float(jac_unit[u]))
        details[i] = info
    table = _set(table, "content_hash", pa.array(hashes, pa.string()))
    table = _set(table, "dup_cluster", pa.array([doc_ids[r] for r in final.tolist()], pa.string()))
    table = _set(table, "dup_cluster_size", pa.array(size[final], pa.int32()))
    drop = np.flatnonzero(~keep)
    dropped = table.take(pa.array(drop, pa.int64()))
    rejected = (
        rejected_rows(dropped, "dedup", [reasons[i] for i in drop], [details[i] for i in drop])
        if len(drop)
        else empty_rejected()
    )
    kept = table.filter(pa.array(keep))
    kept_sizes = size[keep]
    edges = [config.threshold, 0.8, 0.9, 1.0]
    edges = sorted({e for e in edges if e >= config.threshold})
    meta = {
        "language": lang,
        "shingle": "char" if use_chars else "word",
        "ngram": config.char_ngram if use_chars else config.word_ngram,
        "num_perm": config.num_perm,
        "bands": config.bands,
        "rows": config.rows,
        "effective_threshold": round(config.effective_threshold, 4),
        "threshold": config.threshold,
        "similarity": config.similarity,
        "candidate_probability_at_threshold": round(
            config.candidate_probability(config.threshold), 4
        ),
        **stats,
        "exact_removed": reasons.count("exact_duplicate"),
        "near_removed": len(near_j),
        "near_jaccard_histogram": _histogram(near_j, edges),
        "clusters_with_duplicates": int((kept_sizes > 1).sum()),
        "largest_cluster": int(kept_sizes.max()) if len(kept_sizes) else 0,
    }
    return StageResult(kept, rejected, meta)


def _histogram(values: list[float], edges: list[float]) -> dict[str, int]:
    """Counts per ``[edge_k, edge_k+1)`` bin, the last edge (1.0) a bin of its own."""
    out: dict[str, int] = {}
    v = np.asarray(values)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        out[f"[{lo:g}, {hi:g})"] = int(((v >= lo) & (v < hi)).sum())
    out[f"{edges[-1]:g}"] = int((v >= edges[-1]).sum())
    return out


def _set(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    if name not in table.column_names:  # a table that is not a full contract table
        return table.append_column(name, array)
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
