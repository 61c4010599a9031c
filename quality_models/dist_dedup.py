"""Exact and verified MinHash near-dedup of one language split across shards and workers.

The same decisions as :func:`quality_models.dedup.dedup_stage` (``tests/test_engine.py`` checks
kept rows and ledger rows are equal), computed datatrove/NeMo-style as pure functions over
shards and shuffle partitions that an engine (:mod:`quality_models.engine`) runs in-process or
on Ray:

1. ``sketch`` (per shard): content hash, length, MinHash signature of every document; the
   content hashes are routed by hash range.
2. ``exact_reduce`` (per hash range): identical texts form a unit; its first document in keep
   order represents it. Twins (the other copies) are routed back to their shards.
3. ``band_map`` (per shard): the band values of every unit representative with shingles,
   routed by band and band-key range.
4. ``lsh_reduce`` (per band x key range): sorted band values; equal neighbours are candidate
   edges (the full band is compared, so every edge is a real collision).
5. ``cc_local`` / ``cc_merge`` / ``cc_final``: connected components, per edge partition and
   then merged pairwise: each step replaces its edges by a star per component (node -> the
   smallest node id), which keeps the connectivity, so the merged stars are the components of
   the whole graph whatever the partitioning. Labels go back to the shards.
6. ``member_map`` (per shard) routes every member of a component (signature, keep priority,
   unit size, its twins) by component; ``split_reduce`` (per component range) sorts each
   component by keep priority and splits it around kept representatives exactly as
   :func:`quality_models.dedup.split_component` does, so every removal names a kept document
   with Jaccard >= the threshold and nothing chains.
7. ``filter_map`` (per shard): kept rows (with ``content_hash``, ``dup_cluster``,
   ``dup_cluster_size``) and ledger rows.

Everything a decision depends on (keep priority, band values, the members of a component) is a
property of the documents, never of the shard or partition they landed in, so the clusters and
the kept representatives are the same for any number of shards, partitions and workers. Memory
per task is bounded by one shard (``EngineConfig.batch_rows``) or one shuffle partition; the
last component merge holds one (node, label) pair per document that has a candidate edge.

**Incremental** (``index=``): the kept documents of earlier generations (their signatures,
content hashes, doc ids, kept cluster sizes; :func:`build_index`) join as a *fixed* shard. A
fixed document is never removed and never assigned to anything; it is first in keep order, so
a new document identical or near (verified) to it is removed as its duplicate, and new
documents dedup among themselves as usual. Earlier generations are not recomputed, and their
kept/removed decisions never change: a generation is deduplicated against what was kept before
it, as a full rerun over the generations in order does (:func:`dedup_generations`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .config import DedupConfig
from .contract import StageResult, content_hash, empty_rejected, rejected_rows
from .dedup import (
    _histogram,
    shingle_sets,
    shingle_similarity,
    signature_similarity,
    signatures,
    split_component,
)
from .shingles import fmix64

SHARD = np.int64(1 << 32)  # node id = shard * 2^32 + row
FIXED_SHARD = 0xFFFF  # the incremental index's shard number
_NO_EDGES = np.zeros((0, 2), dtype=np.int64)
KEPT, EXACT, NEAR = 0, 1, 2


def _mix(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return fmix64(values.astype(np.uint64, copy=True))


def _route(values: np.ndarray, parts: int) -> np.ndarray:
    return (_mix(values) % np.uint64(parts)).astype(np.int64)


def _fanout(pieces: list) -> Any:
    """Ray and the local engine return a single object for ``num_returns=1``."""
    return pieces[0] if len(pieces) == 1 else pieces


def _groups(route: np.ndarray, parts: int) -> list[np.ndarray]:
    order = np.argsort(route, kind="stable")
    bounds = np.searchsorted(route[order], np.arange(parts + 1))
    return [order[bounds[p] : bounds[p + 1]] for p in range(parts)]


def _priority(table: pa.Table, keep: str, first: Sequence[str] = ()) -> np.ndarray:
    """Row order by keep priority (after the ``first`` columns): ``doc_id``, or the longest
    first and then ``doc_id``; Arrow's sort is stable and compares UTF-8 bytes (code points)."""
    keys = [(c, "ascending") for c in first]
    if keep == "longest":
        keys.append(("length", "descending"))
    keys.append(("doc_id", "ascending"))
    return np.asarray(pc.sort_indices(table, sort_keys=keys), dtype=np.int64)


def load_shard(spec: Any) -> pa.Table:
    """A shard: an Arrow table, a Parquet file, or ``(path, offset, rows)`` of one."""
    if isinstance(spec, pa.Table):
        return spec
    if isinstance(spec, (str, Path)):
        return pq.read_table(spec)
    path, offset, rows = spec
    pf = pq.ParquetFile(path)
    batches, start = [], 0
    for rg in range(pf.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if start + n > offset and start < offset + rows:
            t = pf.read_row_group(rg)
            lo = max(0, offset - start)
            hi = min(n, offset + rows - start)
            batches.append(t.slice(lo, hi - lo))
        start += n
    return pa.concat_tables(batches) if batches else pf.schema_arrow.empty_table()


def parquet_shards(paths: Sequence[str | Path], batch_rows: int) -> list[tuple[str, int, int]]:
    """``(path, offset, rows)`` shards of about ``batch_rows`` rows over Parquet files, in file
    and row order (only the footers are read)."""
    out = []
    for path in paths:
        total = pq.ParquetFile(path).metadata.num_rows
        out += [(str(path), lo, min(batch_rows, total - lo)) for lo in range(0, total, batch_rows)]
    return out


# --- 1. sketch ------------------------------------------------------------------------------


def sketch(shard: int, spec: Any, cfg: DedupConfig, use_chars: bool, parts: int) -> list:
    """Per shard: the state later stages read (doc ids, lengths, content hashes, signatures)
    and the content hashes routed by hash range."""
    table = load_shard(spec)
    texts = table.column("text").combine_chunks()
    n = len(texts)
    doc_id = table.column("doc_id").combine_chunks().cast(pa.string())
    length = np.asarray(pc.utf8_length(texts), dtype=np.int64) if n else np.zeros(0, np.int64)
    hashes = [content_hash(t) for t in texts.to_pylist()]
    chash = pa.array(hashes, pa.string())
    if cfg.near and n:
        sig, has = signatures(texts, use_chars, cfg)
    else:
        sig, has = np.zeros((n, cfg.num_perm), np.uint32), np.zeros(n, bool)
    state = {"n": n, "doc_id": doc_id, "length": length, "chash": chash, "sig": sig, "has": has}
    pieces: list = [None] * parts
    if cfg.exact and n:
        h = np.array([int(c[:15], 16) for c in hashes], dtype=np.int64)
        node = np.int64(shard) * SHARD + np.arange(n, dtype=np.int64)
        for p, sel in enumerate(_groups(_route(h, parts), parts)):
            idx = pa.array(sel, pa.int64())
            pieces[p] = pa.table({"chash": chash.take(idx), "doc_id": doc_id.take(idx),
                                  "length": length[sel], "node": node[sel],
                                  "weight": np.ones(len(sel), np.int64)})  # fmt: skip
    return [state, *pieces]


# --- 2. exact units ---------------------------------------------------------------------------

_EXACT_SCHEMA = pa.schema(
    [("row", pa.int64()), ("kind", pa.int8()), ("node2", pa.int64()),
     ("rep_doc_id", pa.string()), ("unit_size", pa.int32())]
)  # fmt: skip
TWIN, LINK, REP = 0, 1, 2  # kinds: a twin (node2 = its unit's kept copy), a rep's twin, a rep


def exact_reduce(keep: str, shards: Sequence[int], *pieces: pa.Table | None) -> Any:
    """Identical texts of one hash range: the first in keep order represents the unit. Returns
    one table per shard of ``shards``: twin rows, and for representatives their unit size and
    their twins."""
    tables = [t for t in pieces if t is not None and t.num_rows]
    out = {s: [] for s in shards}
    if tables:
        t = pa.concat_tables(tables)
        fixed = pc.equal(pc.shift_right(t.column("node"), 32), FIXED_SHARD)
        t = t.append_column("gen", pc.if_else(fixed, 0, 1))
        t = t.take(pa.array(_priority(t, keep, ("chash", "gen")), pa.int64()))
        ch = np.asarray(t.column("chash").to_numpy(zero_copy_only=False))
        start = np.ones(len(ch), dtype=bool)
        start[1:] = ch[1:] != ch[:-1]
        unit = np.cumsum(start) - 1
        first = np.flatnonzero(start)
        count = np.diff(np.append(first, len(ch)))
        multi = count[unit] > 1
        # a unit's size counts documents; an index document stands for its whole kept cluster
        size = np.add.reduceat(np.asarray(t.column("weight"), dtype=np.int64), first)
        node = np.asarray(t.column("node"))
        rep_node = node[first[unit]]
        docs = t.column("doc_id")
        twin = multi & ~start
        rep = multi & start
        rows = [
            (node[twin], TWIN, rep_node[twin], docs.take(pa.array(first[unit][twin])),
             size[unit][twin]),
            (rep_node[twin], LINK, node[twin], None, size[unit][twin]),
            (node[rep], REP, node[rep], None, size[unit][rep]),
        ]  # fmt: skip
        for target, kind, other, rep_doc, usize in rows:
            shard_of = target >> 32
            for s in np.unique(shard_of).tolist():
                if s not in out:
                    continue
                sel = np.flatnonzero(shard_of == s)
                out[s].append(pa.table({
                    "row": target[sel] & (SHARD - 1),
                    "kind": np.full(len(sel), kind, np.int8),
                    "node2": other[sel],
                    "rep_doc_id": rep_doc.take(pa.array(sel)) if rep_doc is not None
                    else pa.nulls(len(sel), pa.string()),
                    "unit_size": usize[sel].astype(np.int32),
                }, schema=_EXACT_SCHEMA))  # fmt: skip
    return _fanout(
        [pa.concat_tables(out[s]) if out[s] else _EXACT_SCHEMA.empty_table() for s in shards]
    )


def _exact_info(pieces: Sequence[pa.Table | None]) -> pa.Table:
    tables = [p for p in pieces if p is not None and p.num_rows]
    return pa.concat_tables(tables) if tables else _EXACT_SCHEMA.empty_table()


def _kind(info: pa.Table, kind: int) -> pa.Table:
    return info.filter(pc.equal(info.column("kind"), kind))


# --- 3-4. LSH ---------------------------------------------------------------------------------


def lsh_partitions(cfg: DedupConfig, parts: int) -> int:
    """Key ranges per band: enough for about ``parts`` partitions in all."""
    return max(1, -(-parts // cfg.bands))


def band_map(shard: int, state: dict, cfg: DedupConfig, ranges: int, *exact: pa.Table) -> Any:
    """Band values of the shard's unit representatives with shingles, routed by
    ``band * ranges + key range`` (a band's equal values always land in one partition)."""
    use = state["has"].copy()
    twins = _kind(_exact_info(exact), TWIN)
    use[np.asarray(twins.column("row"), dtype=np.int64)] = False
    rows = np.flatnonzero(use)
    node = np.int64(shard) * SHARD + rows
    sig = state["sig"]
    out: list = [None] * (cfg.bands * ranges)
    rng = np.random.default_rng(cfg.seed)
    mult = rng.integers(1, 2**63, size=cfg.rows, dtype=np.uint64) | np.uint64(1)
    for band in range(cfg.bands):
        vals = sig[rows, band * cfg.rows : (band + 1) * cfg.rows]
        with np.errstate(over="ignore"):
            key = (vals.astype(np.uint64) * mult[None, :]).sum(axis=1, dtype=np.uint64)
        for r, sel in enumerate(_groups(_route(key, ranges), ranges)):
            if len(sel):
                out[band * ranges + r] = (node[sel], np.ascontiguousarray(vals[sel]))
    return _fanout(out)


def lsh_reduce(*pieces: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Candidate edges of one band partition: documents with equal band values, each joined to
    the next one in (values, node) order (a bucket of m documents gives a path of m - 1)."""
    parts = [p for p in pieces if p is not None]
    if not parts:
        return _NO_EDGES
    node = np.concatenate([p[0] for p in parts])
    vals = np.concatenate([p[1] for p in parts])
    if len(node) < 2:
        return _NO_EDGES
    order = np.lexsort((node, *[vals[:, c] for c in range(vals.shape[1] - 1, -1, -1)]))
    sv = vals[order]
    same = (sv[1:] == sv[:-1]).all(axis=1)
    a, b = node[order[:-1][same]], node[order[1:][same]]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


# --- 5. connected components -------------------------------------------------------------------


def _stars(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(node, label)``: every node of ``edges`` and the smallest node of its component."""
    if not len(edges):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nodes, inv = np.unique(edges.ravel(), return_inverse=True)
    inv = inv.reshape(-1, 2)
    graph = coo_matrix(
        (np.ones(len(inv), dtype=np.int8), (inv[:, 0], inv[:, 1])), shape=(len(nodes),) * 2
    )
    _, lab = connected_components(graph, directed=False)
    first = np.full(lab.max() + 1, len(nodes), dtype=np.int64)
    np.minimum.at(first, lab, np.arange(len(nodes), dtype=np.int64))  # nodes are sorted
    return nodes, nodes[first[lab]]


def cc_local(*edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Components of some edge partitions, as stars; also the number of distinct edges."""
    e = np.concatenate([x for x in edges if len(x)]) if any(len(x) for x in edges) else _NO_EDGES
    e = np.unique(e, axis=0) if len(e) else e
    nodes, labels = _stars(e)
    return nodes, labels, len(e)


def cc_merge(*forests: tuple[np.ndarray, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge star forests: the stars keep each part's connectivity, so their components are
    the components of all the parts' edges together."""
    e = [np.stack([f[0], f[1]], axis=1) for f in forests if len(f[0])]
    nodes, labels = _stars(np.concatenate(e) if e else _NO_EDGES)
    return nodes, labels, sum(f[2] for f in forests)


def cc_final(shards: Sequence[int], *forests: tuple[np.ndarray, np.ndarray, int]) -> Any:
    """The last merge; labels routed to the shards (``(rows, labels)`` per shard) and the
    edge count."""
    nodes, labels, edges = cc_merge(*forests)
    shard_of = nodes >> 32
    out = []
    for s in shards:
        sel = shard_of == s
        out.append((nodes[sel] & (SHARD - 1), labels[sel]))
    return _fanout([*out, edges])


# --- 6. split components around kept representatives -----------------------------------------


def member_map(
    shard: int, state: dict, cfg: DedupConfig, parts: int, spec: Any, use_chars: bool,
    labels: tuple[np.ndarray, np.ndarray], *exact: pa.Table,
) -> Any:  # fmt: skip
    """Every component member of this shard with what its split needs, routed by component."""
    rows, label = labels
    out: list = [None] * parts
    if not len(rows):
        return _fanout(out)
    info = _exact_info(exact)
    unit_size = np.array(state.get("kept_size", np.ones(state["n"], np.int64)), dtype=np.int64)
    reps = _kind(info, REP)
    unit_size[np.asarray(reps.column("row"), dtype=np.int64)] = np.asarray(reps.column("unit_size"))
    links = _kind(info, LINK)
    link_row = np.asarray(links.column("row"), dtype=np.int64)
    link_twin = np.asarray(links.column("node2"), dtype=np.int64)
    sets = None
    if cfg.similarity == "shingles":
        texts = load_shard(spec).column("text").combine_chunks()
        sets = shingle_sets(texts.take(pa.array(rows, pa.int64())), use_chars, cfg)
    fixed = shard == FIXED_SHARD
    for p, sel in enumerate(_groups(_route(label, parts), parts)):
        if not len(sel):
            continue
        r = rows[sel]
        pos = {int(x): k for k, x in enumerate(r.tolist())}
        has_link = np.isin(link_row, r)
        owner = np.array([pos[int(x)] for x in link_row[has_link]], dtype=np.int64)
        out[p] = {
            "label": label[sel],
            "node": np.int64(shard) * SHARD + r,
            "table": pa.table(
                {"doc_id": state["doc_id"].take(pa.array(r)), "length": state["length"][r]}
            ),  # fmt: skip
            "unit_size": unit_size[r],
            "fixed": np.full(len(r), fixed),
            "sig": state["sig"][r],
            "sets": [sets[i] for i in sel] if sets is not None else None,
            "twin_owner": owner,
            "twin_node": link_twin[has_link],
        }
    return _fanout(out)


_DECISION_SCHEMA = pa.schema(
    [("row", pa.int64()), ("reason", pa.int8()), ("dup", pa.string()),
     ("jac", pa.float64()), ("size", pa.int64())]
)  # fmt: skip


def split_reduce(cfg: DedupConfig, shards: Sequence[int], *pieces: dict | None) -> Any:
    """Split every component of one range around kept representatives, in keep order (fixed
    index documents first); decisions for members and their twins, routed to their shards,
    then the partition's statistics."""
    parts = [p for p in pieces if p is not None]
    out = {s: [] for s in shards}
    stats = {"components_with_duplicates": 0, "largest_component": 1, "components_split": 0}
    if parts:
        offsets = np.cumsum([0] + [len(p["label"]) for p in parts])
        label = np.concatenate([p["label"] for p in parts])
        node = np.concatenate([p["node"] for p in parts])
        table = pa.concat_tables([p["table"] for p in parts])
        fixed = np.concatenate([p["fixed"] for p in parts])
        table = table.append_column("label", pa.array(label)).append_column(
            "gen", pa.array(np.where(fixed, 0, 1))
        )
        order = _priority(table, cfg.keep, ("label", "gen"))
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        label, node, fixed = label[order], node[order], fixed[order]
        unit_size = np.concatenate([p["unit_size"] for p in parts])[order]
        doc_id = table.column("doc_id").take(pa.array(order)).to_pylist()
        if cfg.similarity == "shingles":
            all_sets = [s for p in parts for s in p["sets"]]
            similarity = shingle_similarity([all_sets[i] for i in order])
        else:
            similarity = signature_similarity(np.concatenate([p["sig"] for p in parts])[order])
        m = len(label)
        rep = np.arange(m, dtype=np.int64)
        jac = np.ones(m)
        start = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
        end = np.r_[start[1:], m]
        for lo, hi in zip(start.tolist(), end.tolist(), strict=True):
            members = np.arange(lo, hi, dtype=np.int64)
            n_fixed = int(fixed[lo:hi].sum())
            rep[lo:hi], jac[lo:hi] = split_component(members, similarity, cfg.threshold, n_fixed)
        size = np.bincount(rep, weights=unit_size, minlength=m).astype(np.int64)
        sizes = end - start
        kept_per = np.add.reduceat((rep == np.arange(m)).astype(np.int64), start)
        stats = {
            "components_with_duplicates": int(len(start)),
            "largest_component": int(sizes.max()),
            "components_split": int((kept_per > 1).sum()),
        }
        twin_owner = np.concatenate(
            [p["twin_owner"] + off for p, off in zip(parts, offsets[:-1], strict=True)]
        )
        twin_owner = inv[twin_owner.astype(np.int64)] if len(twin_owner) else twin_owner
        twin_node = np.concatenate([p["twin_node"] for p in parts])
        # members: kept (their final size) or near duplicates of their representative
        kept = rep == np.arange(m)
        m_target = node
        m_reason = np.where(kept, KEPT, NEAR).astype(np.int8)
        m_dup = np.array(doc_id, dtype=object)[rep]
        m_jac = jac
        m_size = size[rep]
        # twins of a member: exact copies of it when it is kept, else near copies of its rep
        o = twin_owner.astype(np.int64)
        t_reason = np.where(kept[o], EXACT, NEAR).astype(np.int8)
        t_dup = np.array(doc_id, dtype=object)[rep[o]] if len(o) else np.zeros(0, object)
        t_jac = jac[o]
        t_size = size[rep[o]]
        target = np.concatenate([m_target[~fixed], twin_node])
        reason = np.concatenate([m_reason[~fixed], t_reason])
        dup = np.concatenate([m_dup[~fixed], t_dup])
        jacs = np.concatenate([m_jac[~fixed], t_jac])
        sz = np.concatenate([m_size[~fixed], t_size])
        shard_of = target >> 32
        for s in np.unique(shard_of).tolist():
            if s not in out:
                continue
            sel = np.flatnonzero(shard_of == s)
            out[s].append(pa.table({
                "row": target[sel] & (SHARD - 1), "reason": reason[sel],
                "dup": pa.array(dup[sel].tolist(), pa.string()), "jac": jacs[sel],
                "size": sz[sel],
            }, schema=_DECISION_SCHEMA))  # fmt: skip
    tables = [
        pa.concat_tables(out[s]) if out[s] else _DECISION_SCHEMA.empty_table() for s in shards
    ]
    return _fanout([*tables, stats])


# --- 7. filter -------------------------------------------------------------------------------


def filter_map(
    shard: int, spec: Any, state: dict, cfg: DedupConfig, n_exact: int, *pieces: Any,
    out: tuple[str, str] | None = None,
) -> tuple[Any, Any, dict]:  # fmt: skip
    """Kept rows (with ``content_hash``, ``dup_cluster``, ``dup_cluster_size``) and ledger rows
    of one shard, in its row order, and its statistics. With ``out = (folder, name)`` the rows
    are written there as part files (:func:`quality_models.storage.write_part`) and only their
    descriptions are returned, so no table travels back to the driver."""
    table = load_shard(spec)
    n = state["n"]
    doc_ids = state["doc_id"].to_pylist()
    final = list(doc_ids)
    reason = np.zeros(n, dtype=np.int8)
    jac = np.ones(n)
    size = np.ones(n, dtype=np.int64)
    info = _exact_info(pieces[:n_exact])
    for kind in (REP, TWIN):
        part = _kind(info, kind)
        rows = np.asarray(part.column("row"), dtype=np.int64)
        size[rows] = np.asarray(part.column("unit_size"))
        if kind == TWIN:
            reason[rows] = EXACT
            for r, d in zip(rows.tolist(), part.column("rep_doc_id").to_pylist(), strict=True):
                final[r] = d
    for part in pieces[n_exact:]:
        if part is None or not part.num_rows:
            continue
        rows = np.asarray(part.column("row"), dtype=np.int64)
        reason[rows] = np.asarray(part.column("reason"))
        jac[rows] = np.asarray(part.column("jac"))
        size[rows] = np.asarray(part.column("size"))
        for r, d in zip(rows.tolist(), part.column("dup").to_pylist(), strict=True):
            final[r] = d
    keep = reason == KEPT
    table = _set(table, "content_hash", state["chash"])
    table = _set(table, "dup_cluster", pa.array(final, pa.string()))
    table = _set(table, "dup_cluster_size", pa.array(size, pa.int32()))
    drop = np.flatnonzero(~keep)
    reasons, details, near_j = [], [], []
    for i in drop.tolist():
        info_i: dict = {"duplicate_of": final[i], "cluster_size": int(size[i])}
        if reason[i] == EXACT:
            reasons.append("exact_duplicate")
        else:
            reasons.append("near_duplicate")
            info_i["est_jaccard"] = round(float(jac[i]), 4)
            info_i["similarity"] = cfg.similarity
            near_j.append(float(jac[i]))
        details.append(info_i)
    dropped = table.take(pa.array(drop, pa.int64()))
    rejected = rejected_rows(dropped, "dedup", reasons, details) if len(drop) else empty_rejected()
    kept_table = table.filter(pa.array(keep))
    kept_sizes = size[keep]
    stats = {
        "exact_removed": reasons.count("exact_duplicate"),
        "near_j": near_j,
        "clusters_with_duplicates": int((kept_sizes > 1).sum()),
        "largest_cluster": int(kept_sizes.max()) if len(kept_sizes) else 0,
    }
    if out is not None:
        from .storage import write_part

        folder, name = out
        kept_part = write_part(folder, kept_table, f"kept.{name}") if kept_table.num_rows else None
        rej_part = write_part(folder, rejected, "rejected") if rejected.num_rows else None
        return kept_part, rej_part, stats
    return kept_table, rejected, stats


def _set(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


# --- the driver -------------------------------------------------------------------------------


@dataclass
class DistributedDedup:
    """Per-shard results (engine references) of one dedup run, and its statistics."""

    engine: Any
    kept: list
    rejected: list
    stats: dict[str, Any] = field(default_factory=dict)
    out: tuple[str, str] | None = None
    input_rows: int = 0

    def publish(self, info: dict | None = None):
        """Publish the part files the shards wrote (``out=``) under one manifest."""
        from .storage import publish_parts

        if self.out is None:
            raise ValueError("dedup_sharded(..., out=(folder, name)) writes part files")
        folder, name = self.out
        kept = [k for k in self.engine.get(self.kept) if k is not None]
        rejected = [r for r in self.engine.get(self.rejected) if r is not None]
        return publish_parts(folder, {name: kept}, rejected, input_rows=self.input_rows,
                             info=info)  # fmt: skip

    def to_stage_result(self) -> StageResult:
        """Kept and ledger rows of every shard concatenated (for outputs that fit in memory)."""
        kept = self.engine.get(self.kept)
        rejected = self.engine.get(self.rejected)
        kept_t = pa.concat_tables(kept, promote_options="permissive") if kept else pa.table({})
        rej = [r for r in rejected if r.num_rows]
        rej_t = pa.concat_tables(rej) if rej else empty_rejected()
        return StageResult(kept_t, rej_t, self.stats)


def dedup_sharded(
    shards: Sequence[Any],
    cfg: DedupConfig,
    lang: str | None,
    engine: Any,
    index: dict | None = None,
    out: tuple[str, str] | None = None,
) -> DistributedDedup:
    """Dedup one language given as ``shards`` (tables or Parquet shard specs, in row order) on
    ``engine``; ``index``: the kept documents of earlier generations (:func:`build_index`);
    ``out = (folder, name)``: every shard writes its kept and ledger part files there
    (:meth:`DistributedDedup.publish` then publishes them)."""
    cfg.validate()
    if index is not None and cfg.similarity == "shingles":
        raise ValueError("incremental dedup verifies by signature: set dedup.similarity=signature")
    use_chars = cfg.shingle == "char" or (lang in cfg.char_languages)
    P = max(1, int(engine.partitions))
    specs = [engine.put(s) if isinstance(s, pa.Table) else s for s in shards]
    ids = list(range(len(specs)))
    states, exact_out = [], []
    for s, spec in zip(ids, specs, strict=True):
        res = engine.submit(sketch, s, spec, cfg, use_chars, P, num_returns=1 + P)
        states.append(res[0])
        exact_out.append(res[1:])
    all_ids = list(ids)
    if index is not None:
        all_ids.append(FIXED_SHARD)
        states.append(engine.put(index["state"]))
        exact_out.append([engine.put(t) for t in _index_exact_pieces(index, P)])
    n_all = len(all_ids)
    ex_by = {s: [] for s in all_ids}
    if cfg.exact:
        for p in range(P):
            pieces = [exact_out[k][p] for k in range(n_all)]
            res = engine.submit(exact_reduce, cfg.keep, all_ids, *pieces, num_returns=n_all)
            res = [res] if n_all == 1 else res
            for k, s in enumerate(all_ids):
                ex_by[s].append(res[k])
    split_by = {s: [] for s in ids}
    cc_stats: list = []
    split_stats: list = []
    if cfg.near:
        R = lsh_partitions(cfg, P)
        L = cfg.bands * R
        bands = []
        for k, s in enumerate(all_ids):
            res = engine.submit(band_map, s, states[k], cfg, R, *ex_by[s], num_returns=L)
            bands.append([res] if L == 1 else res)
        edges = [engine.submit(lsh_reduce, *[bands[k][q] for k in range(n_all)]) for q in range(L)]
        forests = [engine.submit(cc_local, *edges[i : i + 4]) for i in range(0, L, 4)]
        while len(forests) > 4:
            forests = [
                engine.submit(cc_merge, *forests[i : i + 4]) for i in range(0, len(forests), 4)
            ]
        res = engine.submit(cc_final, all_ids, *forests, num_returns=n_all + 1)
        labels, cc_stats = res[:-1], [res[-1]]
        members = []
        for k, s in enumerate(all_ids):
            spec = specs[k] if k < len(specs) else None
            r = engine.submit(member_map, s, states[k], cfg, P, spec, use_chars, labels[k],
                              *ex_by[s], num_returns=P)  # fmt: skip
            members.append([r] if P == 1 else r)
        for p in range(P):
            r = engine.submit(split_reduce, cfg, ids, *[members[k][p] for k in range(n_all)],
                              num_returns=len(ids) + 1)  # fmt: skip
            for k, s in enumerate(ids):
                split_by[s].append(r[k])
            split_stats.append(r[-1])
    kept, rejected, stats = [], [], []
    for k, s in enumerate(ids):
        r = engine.submit(_filter_task, out, s, specs[k], states[k], cfg, len(ex_by[s]),
                          *ex_by[s], *split_by[s], num_returns=3)  # fmt: skip
        kept.append(r[0])
        rejected.append(r[1])
        stats.append(r[2])
    meta = _metadata(cfg, use_chars, lang, engine.get(stats), engine.get(split_stats),
                     engine.get(cc_stats))  # fmt: skip
    rows = engine.get([engine.submit(_rows, st) for st in states[: len(ids)]])
    return DistributedDedup(engine, kept, rejected, meta, out, int(sum(rows)))


def _rows(state: dict) -> int:
    return int(state["n"])


def _filter_task(out, shard, spec, state, cfg, n_exact, *pieces):
    return filter_map(shard, spec, state, cfg, n_exact, *pieces, out=out)


def _metadata(cfg, use_chars, lang, stats, split_stats, cc_stats) -> dict[str, Any]:
    near_j = [j for s in stats for j in s["near_j"]]
    edges = sorted({e for e in [cfg.threshold, 0.8, 0.9, 1.0] if e >= cfg.threshold})
    comp = sum(s["components_with_duplicates"] for s in split_stats)
    return {
        "language": lang,
        "shingle": "char" if use_chars else "word",
        "ngram": cfg.char_ngram if use_chars else cfg.word_ngram,
        "num_perm": cfg.num_perm,
        "bands": cfg.bands,
        "rows": cfg.rows,
        "effective_threshold": round(cfg.effective_threshold, 4),
        "threshold": cfg.threshold,
        "similarity": cfg.similarity,
        "candidate_probability_at_threshold": round(cfg.candidate_probability(cfg.threshold), 4),
        "candidate_edges": int(sum(cc_stats)) if cc_stats else 0,
        "components_with_duplicates": comp,
        "largest_component": max([s["largest_component"] for s in split_stats], default=1),
        "components_split": sum(s["components_split"] for s in split_stats),
        "exact_removed": sum(s["exact_removed"] for s in stats),
        "near_removed": len(near_j),
        "near_jaccard_histogram": _histogram(near_j, edges),
        "clusters_with_duplicates": sum(s["clusters_with_duplicates"] for s in stats),
        "largest_cluster": max([s["largest_cluster"] for s in stats], default=0),
    }


# --- incremental ------------------------------------------------------------------------------

INDEX_SCHEMA_VERSION = 1


def build_index(
    kept: Sequence[pa.Table],
    cfg: DedupConfig,
    lang: str | None,
    previous: dict | None = None,
    rejected: Sequence[pa.Table] = (),
) -> dict:
    """The index of what was kept so far: a generation's kept rows (with ``dup_cluster_size``)
    added to the ``previous`` index, whose kept cluster sizes grow by that generation's
    removals that name them (``rejected``: its ledger rows). Signatures are computed once,
    when a document is kept."""
    use_chars = cfg.shingle == "char" or (lang in cfg.char_languages)
    tables = [t for t in kept if t.num_rows]
    doc_id, length, chash, sig, ksize = [], [], [], [], []
    if previous is not None:
        st = previous["state"]
        doc_id.append(st["doc_id"])
        length.append(st["length"])
        chash.append(st["chash"])
        sig.append(st["sig"])
        sizes = np.array(st["kept_size"], dtype=np.int64, copy=True)
        pos = {d: k for k, d in enumerate(st["doc_id"].to_pylist())}
        for t in rejected:  # a removal reports its kept document's grown cluster size
            for det in t.column("details").to_pylist():
                info = json.loads(det)
                k = pos.get(info.get("duplicate_of"))
                if k is not None:
                    sizes[k] = max(sizes[k], int(info["cluster_size"]))
        ksize.append(sizes)
    for t in tables:
        texts = t.column("text").combine_chunks()
        doc_id.append(t.column("doc_id").combine_chunks().cast(pa.string()))
        length.append(np.asarray(pc.utf8_length(texts), dtype=np.int64))
        chash.append(t.column("content_hash").combine_chunks().cast(pa.string()))
        sig.append(signatures(texts, use_chars, cfg)[0])
        ksize.append(np.asarray(t.column("dup_cluster_size"), dtype=np.int64))
    d = pa.concat_arrays(doc_id) if doc_id else pa.array([], pa.string())
    c = pa.concat_arrays(chash) if chash else pa.array([], pa.string())
    sg = np.concatenate(sig) if sig else np.zeros((0, cfg.num_perm), np.uint32)
    ln = np.concatenate(length) if length else np.zeros(0, np.int64)
    ks = np.concatenate(ksize) if ksize else np.zeros(0, np.int64)
    if len(d) >= SHARD:
        raise ValueError("the index holds more than 2^32 documents")
    has = np.ones(len(d), dtype=bool)  # kept documents with shingles would have; checked below
    has &= ~(sg == np.iinfo(np.uint32).max).all(axis=1)
    state = {"n": len(d), "doc_id": d, "length": ln, "chash": c, "sig": sg, "has": has,
             "kept_size": ks}  # fmt: skip
    return {"version": INDEX_SCHEMA_VERSION, "config": _index_key(cfg, use_chars), "state": state}


def _index_key(cfg: DedupConfig, use_chars: bool) -> dict:
    ngram = cfg.char_ngram if use_chars else cfg.word_ngram
    return {"num_perm": cfg.num_perm, "seed": cfg.seed, "bands": cfg.bands, "rows": cfg.rows,
            "ngram": ngram, "chars": use_chars}  # fmt: skip


def _index_exact_pieces(index: dict, parts: int) -> list:
    st = index["state"]
    n = st["n"]
    pieces: list = [None] * parts
    if not n:
        return pieces
    hashes = st["chash"].to_pylist()
    h = np.array([int(c[:15], 16) for c in hashes], dtype=np.int64)
    node = np.int64(FIXED_SHARD) * SHARD + np.arange(n, dtype=np.int64)
    for p, sel in enumerate(_groups(_route(h, parts), parts)):
        idx = pa.array(sel, pa.int64())
        pieces[p] = pa.table({"chash": st["chash"].take(idx), "doc_id": st["doc_id"].take(idx),
                              "length": st["length"][sel], "node": node[sel],
                              "weight": st["kept_size"][sel]})  # fmt: skip
    return pieces


def save_index(index: dict, path: str | Path) -> Path:
    """The index as one Parquet file (signatures as a fixed-size list column)."""
    st = index["state"]
    sig = st["sig"]
    table = pa.table({
        "doc_id": st["doc_id"], "length": st["length"], "content_hash": st["chash"],
        "kept_size": st["kept_size"],
        "signature": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), sig.shape[1]),
    })  # fmt: skip
    meta = {b"govtune_dedup_index": json.dumps(
        {"version": index["version"], "config": index["config"]}).encode()}  # fmt: skip
    table = table.replace_schema_metadata(meta)
    from .contract import write_parquet_atomic

    return write_parquet_atomic(table, path)


def load_index(path: str | Path, cfg: DedupConfig, lang: str | None) -> dict:
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"govtune_dedup_index"])
    use_chars = cfg.shingle == "char" or (lang in cfg.char_languages)
    if meta["config"] != _index_key(cfg, use_chars) or meta["version"] != INDEX_SCHEMA_VERSION:
        raise ValueError(f"{path}: index built with other MinHash settings {meta['config']}")
    n = table.num_rows
    flat = table.column("signature").combine_chunks().flatten()
    sig = np.asarray(flat, dtype=np.uint32).reshape(n, -1)
    st = {"n": n, "doc_id": table.column("doc_id").combine_chunks(),
          "length": np.asarray(table.column("length"), dtype=np.int64),
          "chash": table.column("content_hash").combine_chunks(), "sig": sig,
          "has": ~(sig == np.iinfo(np.uint32).max).all(axis=1),
          "kept_size": np.asarray(table.column("kept_size"), dtype=np.int64)}  # fmt: skip
    return {"version": meta["version"], "config": meta["config"], "state": st}


def dedup_generations(
    generations: Sequence[Sequence[Any]], cfg: DedupConfig, lang: str | None, engine: Any
) -> list[StageResult]:
    """A full rerun over generations in order: each deduplicated against what the earlier ones
    kept (what the incremental mode computes one generation at a time)."""
    index = None
    out = []
    for shards in generations:
        res = dedup_sharded(shards, cfg, lang, engine, index=index).to_stage_result()
        out.append(res)
        index = build_index([res.kept], cfg, lang, previous=index, rejected=[res.rejected])
    return out


def dedup_with_engine(
    table: pa.Table, cfg: DedupConfig, lang: str | None, engine_config: Any = None
) -> StageResult:
    """:func:`quality_models.dedup.dedup_stage`'s result, computed in shards of
    ``engine_config.batch_rows`` on the engine it names (the same rows and ledger). A table
    that fits one shard on the local engine goes straight to ``dedup_stage``."""
    from .config import EngineConfig
    from .dedup import dedup_stage
    from .engine import make_engine, temporary_spill_dir

    ec = engine_config or EngineConfig()
    if ec.name == "local" and table.num_rows <= ec.batch_rows:
        return dedup_stage(table, cfg, lang)
    spill = temporary_spill_dir() if ec.name == "local" else None
    try:
        engine = make_engine(ec, spill_dir=spill)
        shards = [table.slice(lo, ec.batch_rows) for lo in range(0, table.num_rows, ec.batch_rows)]
        return dedup_sharded(shards or [table], cfg, lang, engine).to_stage_result()
    finally:
        if spill:
            import shutil

            shutil.rmtree(spill, ignore_errors=True)


def uses_shards(config: Any, rows: int) -> bool:
    """Whether a language of ``rows`` documents is deduplicated by the sharded pipeline: always
    on Ray, on the local engine when it exceeds one shard (``GovernanceConfig``)."""
    return bool(config.dedup.enabled and rows > 0) and (
        config.engine.name != "local" or rows > config.engine.batch_rows
    )


def dedup_published(
    files: Sequence[str | Path], config: Any, lang: str, folder: str | Path,
    info: dict | None = None,
) -> tuple[StageResult, Any]:  # fmt: skip
    """Out of core: dedup one language's Parquet ``files`` in shards on the configured engine,
    every shard writing its kept and ledger part files into ``folder``, then publish them under
    one manifest. Returns ``(result, published)``: ``result`` carries the ledger rows, the
    metadata and the kept *count* (its ``kept`` table has no columns of data: the rows are in
    the part files)."""
    from .engine import make_engine, temporary_spill_dir
    from .storage import ALL, read_published

    ec = config.engine
    spill = temporary_spill_dir() if ec.name == "local" else None
    try:
        engine = make_engine(ec, spill_dir=spill)
        shards = parquet_shards(files, ec.batch_rows)
        # one split, named like a one-table publication's (stage_io publishes kept rows so)
        run = dedup_sharded(shards, config.dedup, lang, engine, out=(str(folder), ALL))
        pub = run.publish(info)
    finally:
        if spill:
            import shutil

            shutil.rmtree(spill, ignore_errors=True)
    pub = read_published(folder)
    kept = pa.table({"doc_id": pa.nulls(pub.kept_rows(ALL))})  # a count, no data
    return StageResult(kept, pub.rejected(), run.stats), pub
