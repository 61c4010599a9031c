"""Exact and verified MinHash near-duplicate removal (``quality_models/dedup.py``).

The corpora are real running text (``dataset_build`` paragraphs) with seeded word edits, so the
true Jaccard of every pair is known from the shingle sets and every removal can be audited.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import regex
from datasketch import MinHash, MinHashLSH

from quality_models.config import ConfigError, DedupConfig, governance_config_from_dict
from quality_models.contract import documents_from_records
from quality_models.dedup import (
    assign_representatives,
    candidate_pairs,
    combine_tokens,
    components,
    dedup_stage,
    jaccard,
    shingle_hashes,
    signatures,
    split_component,
    token_hash,
    word_tokens,
)
from quality_models.shipped_text import running_text

THRESHOLD = DedupConfig().threshold


def _table(docs, lang="en"):
    """Contract table from ``(doc_id, text)`` pairs."""
    return documents_from_records(
        {"doc_id": d, "source": "test", "text": t, "lang": lang} for d, t in docs
    )


def _base_docs(n, words, rng, lang="en"):
    """``n`` documents of exactly ``words`` words, each from its own consecutive paragraphs."""
    out, cur = [], []
    for p in running_text(lang, "demo"):
        cur += p.split()
        if len(cur) >= words:
            out.append(cur[:words])
            cur = []
    rng.shuffle(out)
    assert len(out) >= n
    return out[:n]


def _vocab(lang="en"):
    return sorted({w for p in running_text(lang, "demo")[:300] for w in p.split()})


def _edit(words, fraction, rng, vocab):
    """A copy with ``fraction`` of the positions (at least one) replaced by random words."""
    out = list(words)
    for _ in range(max(1, round(fraction * len(out)))):
        out[rng.randrange(len(out))] = rng.choice(vocab)
    return out


def _chains(seed=0, n_chains=20, length=10, words=180, fraction=0.02):
    """``n_chains`` chains of ``length`` documents; each step edits 2% of the previous step's
    words. doc_ids are a seeded shuffle, so the kept document sits anywhere in a chain.
    Returns ``[(doc_id, text)]`` and ``doc_id -> (chain, step)``."""
    rng = random.Random(seed)
    vocab = _vocab()
    ids = [f"d{k:04d}" for k in rng.sample(range(10_000), n_chains * length)]
    docs, where = [], {}
    for c, base in enumerate(_base_docs(n_chains, words, rng)):
        cur = base
        for s in range(length):
            doc_id = ids[c * length + s]
            docs.append((doc_id, " ".join(cur)))
            where[doc_id] = (c, s)
            cur = _edit(cur, fraction, rng, vocab)
    return docs, where


def _planted(seed=1, n_base=160, words=120):
    """Distinct base documents plus, for every other base, one near-copy with 1-12% of its
    words edited (true Jaccard about 0.95 down to 0.5). Returns the documents and the
    ``(copy, base)`` pairs."""
    rng = random.Random(seed)
    vocab = _vocab()
    docs, pairs = [], []
    for k, words_k in enumerate(_base_docs(n_base, words, rng)):
        docs.append((f"b{k:03d}", " ".join(words_k)))
        if k % 2 == 0:
            fraction = (0.01, 0.02, 0.03, 0.05, 0.08, 0.12)[(k // 2) % 6]
            docs.append((f"n{k:03d}", " ".join(_edit(words_k, fraction, rng, vocab))))
            pairs.append((f"n{k:03d}", f"b{k:03d}"))
    return docs, pairs


def _true_j(a, b):
    cfg = DedupConfig()
    return jaccard(shingle_hashes(a, False, cfg), shingle_hashes(b, False, cfg))


def _removals(res):
    return {r["doc_id"]: (r["reason"], json.loads(r["details"])) for r in res.rejected.to_pylist()}


def _outcome(res):
    """doc_id -> everything dedup decided about it, independent of row order."""
    out = {}
    for r in res.kept.to_pylist():
        out[r["doc_id"]] = ("kept", r["dup_cluster"], r["dup_cluster_size"])
    for doc_id, (reason, details) in _removals(res).items():
        out[doc_id] = (reason, json.dumps(details, sort_keys=True))
    return out


# --- signatures and LSH: bit-identical to datasketch -----------------------------------------


def test_signatures_equal_datasketch_minhash():
    cfg = DedupConfig()
    texts = list(running_text("fr", "demo")[:20])
    sig, has = signatures(texts, use_chars=False, config=cfg)
    assert has.all()
    for i, text in enumerate(texts):
        toks = [token_hash(w) for w in word_tokens(text)]
        shingles = {tuple(toks[j : j + 5]) for j in range(max(1, len(toks) - 4))}
        ref = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=combine_tokens)
        ref.update_batch(list(shingles))
        assert np.array_equal(ref.hashvalues, sig[i])


def test_lsh_banding_agrees_with_datasketch_lsh():
    cfg = DedupConfig()
    base = list(running_text("es", "demo")[:40])
    texts = base + [t.replace(" de ", " del ", 1) for t in base[:10]]  # 10 near copies
    sig, has = signatures(texts, False, cfg)
    pairs = candidate_pairs(sig, has, cfg)
    ours = components(len(texts), pairs)
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    a, b = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).permutations
    hashes = [MinHash(hashvalues=s, seed=cfg.seed, permutations=(a, b), scheme="affine32")
              for s in sig]  # fmt: skip
    for i, m in enumerate(hashes):
        lsh.insert(str(i), m)
    reference = {i: {int(k) for k in lsh.query(m)} for i, m in enumerate(hashes)}
    for i, candidates in reference.items():
        assert all(ours[c] == ours[i] for c in candidates)
    for x, y in pairs.tolist():  # every edge is a collision datasketch reports too
        assert y in reference[x]
    assert sum(ours[i] == ours[40 + i] for i in range(10)) >= 9


def test_candidate_pairs_are_sorted_unique_edges_and_skip_empty_documents():
    cfg = DedupConfig()
    para = running_text("en", "demo")[7]
    texts = [para, "!!! ???", para + " Extra words here.", "", para, "...", "… —"]
    sig, has = signatures(texts, False, cfg)
    assert has.tolist() == [True, False, True, False, True, False, False]
    pairs = candidate_pairs(sig, has, cfg)
    assert pairs.dtype == np.int64 and pairs.shape[1] == 2
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert pairs.tolist() == sorted(map(list, set(map(tuple, pairs.tolist()))))
    assert set(pairs.ravel().tolist()) == {0, 2, 4}
    assert components(len(texts), pairs).tolist() == [0, 1, 0, 3, 0, 5, 6]


def test_components_are_labelled_by_smallest_member_whatever_the_edge_order():
    pairs = np.array([[5, 6], [1, 2], [2, 3], [0, 4]])
    assert components(8, pairs).tolist() == [0, 1, 1, 1, 0, 5, 5, 7]
    assert components(8, pairs[::-1].copy()).tolist() == [0, 1, 1, 1, 0, 5, 5, 7]
    assert components(3, np.zeros((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


# --- splitting components around kept representatives ---------------------------------------


def _matrix_similarity(m):
    m = np.asarray(m, dtype=float)
    return lambda r, idx: m[r, idx]


def test_split_component_never_assigns_across_a_chain():
    # a path 0-1-2-3: neighbours at 0.8, two apart 0.6, three apart 0.4
    m = [[1, 0.8, 0.6, 0.4], [0.8, 1, 0.8, 0.6], [0.6, 0.8, 1, 0.8], [0.4, 0.6, 0.8, 1]]
    rep, jac = split_component(np.arange(4), _matrix_similarity(m), 0.7)
    assert rep.tolist() == [0, 0, 2, 2] and jac.tolist() == [1.0, 0.8, 1.0, 0.8]
    # keep priority decides: with 1 first it covers 0 and 2, and 3 stays
    rep, _ = split_component(np.array([1, 0, 2, 3]), _matrix_similarity(m), 0.7)
    assert rep.tolist() == [1, 1, 1, 3]


def test_assign_representatives_uses_priority_not_position():
    m = np.full((5, 5), 0.9)
    m[4, :] = m[:, 4] = 0.1
    np.fill_diagonal(m, 1.0)
    labels = np.array([0, 0, 0, 3, 3])  # components {0,1,2} and {3,4}
    rep, jac = assign_representatives(labels, _matrix_similarity(m), 0.7)
    assert rep.tolist() == [0, 0, 0, 3, 4] and jac[[1, 2]].tolist() == [0.9, 0.9]
    rep, _ = assign_representatives(labels, _matrix_similarity(m), 0.7, np.array([4, 0, 1, 2, 3]))
    assert rep.tolist() == [1, 1, 1, 3, 4]


# --- the stage on real text ------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["signature", "shingles"])
def test_chains_remove_only_near_copies_of_kept_documents(similarity):
    docs, where = _chains()
    text = dict(docs)
    cfg = DedupConfig(similarity=similarity)
    res = dedup_stage(_table(docs), cfg, "en")
    kept = set(res.kept["doc_id"].to_pylist())
    removed = _removals(res)
    assert len(kept) + len(removed) == len(docs)
    sig, _ = signatures([t for _, t in docs], False, cfg)
    row = {d: i for i, (d, _) in enumerate(docs)}
    true = {}
    for doc_id, (reason, details) in removed.items():
        assert reason == "near_duplicate"
        of = details["duplicate_of"]
        assert of in kept and where[of][0] == where[doc_id][0]  # a kept copy in its own chain
        assert details["est_jaccard"] >= THRESHOLD and details["similarity"] == similarity
        if similarity == "signature":  # measured against duplicate_of, not a cluster root
            est = float(np.mean(sig[row[doc_id]] == sig[row[of]]))
            assert details["est_jaccard"] == pytest.approx(est, abs=1e-4)
        true[doc_id] = _true_j(text[doc_id], text[of])
    below = sorted(j for j in true.values() if j < THRESHOLD)
    print(f"{similarity}: removed {len(removed)}, true J < {THRESHOLD}: {len(below)}, "
          f"min true J {min(true.values()):.3f}")  # fmt: skip
    assert min(true.values()) >= 0.5
    if similarity == "shingles":
        assert not below
        for doc_id, (_, details) in removed.items():
            assert details["est_jaccard"] == pytest.approx(true[doc_id], abs=1e-4)
    else:  # the estimate's error (std ~0.04 at 0.7 with 112 slots) lets a few through
        assert len(below) <= 0.3 * len(removed) and below[0] >= THRESHOLD - 0.12
    # a chain is ten steps of about 0.81: one kept document cannot cover it
    per_chain = np.bincount([where[d][0] for d in kept], minlength=20)
    assert per_chain.min() >= 3
    assert 0.3 * len(docs) <= len(removed) <= 0.7 * len(docs)
    for r in res.kept.to_pylist():  # cluster sizes count the kept document and its removals
        size = 1 + sum(d["duplicate_of"] == r["doc_id"] for _, d in removed.values())
        assert r["dup_cluster"] == r["doc_id"] and r["dup_cluster_size"] == size


@pytest.mark.parametrize("similarity", ["signature", "shingles"])
def test_planted_near_copies_recall_and_precision(similarity):
    docs, pairs = _planted()
    text = dict(docs)
    cfg = DedupConfig(similarity=similarity)
    res = dedup_stage(_table(docs), cfg, "en")
    cluster = {d: d for d in res.kept["doc_id"].to_pylist()}
    removed = _removals(res)
    cluster.update({d: det["duplicate_of"] for d, (_, det) in removed.items()})
    truth = [(a, b, _true_j(text[a], text[b])) for a, b in pairs]
    above = [(a, b, j) for a, b, j in truth if j >= THRESHOLD]
    assert 30 <= len(above) < len(truth)  # the plant spans both sides of the threshold
    found = [cluster[a] == cluster[b] for a, b, _ in above]
    recall = sum(found) / len(found)
    recall_high = np.mean([f for f, (_, _, j) in zip(found, above, strict=True) if j >= 0.8])
    near_kept = [_true_j(text[d], text[det["duplicate_of"]]) for d, (_, det) in removed.items()]
    precision = np.mean([j >= THRESHOLD for j in near_kept])
    print(f"{similarity}: recall {recall:.3f} (J >= 0.8: {recall_high:.3f}), "
          f"precision {precision:.3f} over {len(removed)} removals")  # fmt: skip
    assert recall >= 0.85 and recall_high >= 0.97
    assert precision >= (1.0 if similarity == "shingles" else 0.9)
    assert min(near_kept) >= 0.5
    planted_bases = {b for _, b in pairs}
    assert all(d.startswith("n") or d in planted_bases for d in removed)


@pytest.mark.parametrize("keep", ["lowest_doc_id", "longest"])
def test_outcome_does_not_depend_on_row_order(keep):
    docs, _ = _chains(seed=3, n_chains=6)
    docs += [(f"x{k}", t) for k, (_, t) in enumerate(docs[:8])]  # exact twins
    cfg = DedupConfig(keep=keep)
    first = _outcome(dedup_stage(_table(docs), cfg, "en"))
    shuffled = list(docs)
    random.Random(7).shuffle(shuffled)
    assert _outcome(dedup_stage(_table(shuffled), cfg, "en")) == first
    assert _outcome(dedup_stage(_table(docs[::-1]), cfg, "en")) == first


def test_exact_copies_and_twins_of_a_near_duplicate_point_to_the_kept_document():
    paras = running_text("de", "demo")
    para = paras[5]
    near = " ".join(para.split()[:-1] + ["Ende."])
    docs = [("e", "zzz " + para), ("b", para), ("c", para), ("a", near), ("z", paras[6]),
            ("y", paras[6]), ("q", paras[7])]  # fmt: skip
    res = dedup_stage(_table(docs, "de"), DedupConfig(), "de")
    assert sorted(res.kept["doc_id"].to_pylist()) == ["a", "q", "y"]  # lowest doc_id kept
    removed = _removals(res)
    assert {d: r for d, (r, _) in removed.items()} == {
        "e": "near_duplicate",
        "b": "near_duplicate",
        "c": "near_duplicate",  # b's identical twin: b is a near copy of a, so c points to a
        "z": "exact_duplicate",
    }
    assert removed["z"][1] == {"duplicate_of": "y", "cluster_size": 2}
    assert removed["c"][1]["duplicate_of"] == "a"
    assert removed["c"][1]["est_jaccard"] == removed["b"][1]["est_jaccard"]  # vs a, like b
    kept = {r["doc_id"]: r for r in res.kept.to_pylist()}
    assert kept["a"]["dup_cluster_size"] == 4 and kept["y"]["dup_cluster_size"] == 2
    assert kept["q"]["dup_cluster_size"] == 1 and kept["q"]["dup_cluster"] == "q"
    assert all(d["cluster_size"] == 4 for d_id, (_, d) in removed.items() if d_id != "z")
    again = dedup_stage(_table(docs, "de"), DedupConfig(), "de")
    assert again.kept.equals(res.kept) and again.rejected.equals(res.rejected)
    # exact only: twins go, near copies stay
    only_exact = dedup_stage(_table(docs, "de"), DedupConfig(near=False), "de")
    assert sorted(_removals(only_exact)) == ["c", "z"]


def test_exact_twins_with_the_kept_text():
    para = running_text("en", "demo")[11]
    docs = [("k3", para), ("k1", para), ("k2", para), ("k0", running_text("en", "demo")[12])]
    res = dedup_stage(_table(docs), DedupConfig(), "en")
    removed = _removals(res)
    assert {d: (r, det["duplicate_of"]) for d, (r, det) in removed.items()} == {
        "k3": ("exact_duplicate", "k1"),
        "k2": ("exact_duplicate", "k1"),
    }
    assert "est_jaccard" not in removed["k3"][1]
    text = dict(docs)
    assert all(text[d] == text[det["duplicate_of"]] for d, (_, det) in removed.items())


def test_longest_policy_keeps_the_longest_copy():
    para = running_text("fr", "demo")[3]
    longer = para + " Voilà qui est dit."
    docs = [("a", para), ("b", longer), ("c", para.replace(" ", "  ", 1))]
    # c normalises to other bytes (a double space) but the same shingles as a
    res = dedup_stage(_table(docs, "fr"), DedupConfig(keep="longest"), "fr")
    assert res.kept["doc_id"].to_pylist() == ["b"]
    removed = _removals(res)
    assert {d: det["duplicate_of"] for d, (_, det) in removed.items()} == {"a": "b", "c": "b"}
    assert res.kept["dup_cluster_size"].to_pylist() == [3]
    res = dedup_stage(_table(docs, "fr"), DedupConfig(), "fr")
    assert res.kept["doc_id"].to_pylist() == ["a"]


def test_documents_without_shingles_never_cluster():
    docs = [(f"p{k}", t) for k, t in enumerate(["", "!!!", "... ...", "— —", "???", "•", "¡¿"])]
    docs += [("p9", "!!!")]  # an identical twin is still an exact duplicate
    docs += [("s1", "ok"), ("s2", "no"), ("s3", "Fine"), ("s4", "OK!")]  # one shingle each
    res = dedup_stage(_table(docs), DedupConfig(), "en")
    removed = _removals(res)
    assert removed == {
        "p9": ("exact_duplicate", {"duplicate_of": "p1", "cluster_size": 2}),
        "s4": (
            "near_duplicate",  # "OK!" and "ok" are the same token sequence
            {
                "duplicate_of": "s1",
                "cluster_size": 2,
                "est_jaccard": 1.0,
                "similarity": "signature",
            },
        ),
    }
    assert res.metadata["candidate_pairs"] == 1


def test_char_languages_and_extra_columns_pass_through():
    para = running_text("zh", "demo")[2]
    near = para[:10] + para[11] + para[10] + para[12:]
    table = _table([("z1", para), ("z0", near), ("z2", running_text("zh", "demo")[3])], "zh")
    table = table.append_column("label", pa.array([3, 1, 4], pa.int64()))
    res = dedup_stage(table, DedupConfig(), "zh")
    assert res.metadata["shingle"] == "char"
    assert res.kept["doc_id"].to_pylist() == ["z0", "z2"]
    assert res.kept["label"].to_pylist() == [1, 4]
    assert res.kept.column_names == table.column_names


def test_metadata_reports_threshold_and_the_lsh_curve():
    docs, _ = _chains(n_chains=3)
    res = dedup_stage(_table(docs), DedupConfig(), "en")
    m = res.metadata
    assert m["threshold"] == 0.7 and m["similarity"] == "signature"
    assert m["effective_threshold"] == pytest.approx((1 / 14) ** (1 / 8), abs=1e-4)
    assert m["candidate_probability_at_threshold"] == pytest.approx(0.5645, abs=1e-3)
    # three chains of ten: a chain is one LSH component unless a step's pair was missed
    assert 3 <= m["components_with_duplicates"] <= 6
    assert m["components_split"] == m["components_with_duplicates"]  # one keep cannot cover one
    assert m["near_removed"] == res.rejected.num_rows == sum(m["near_jaccard_histogram"].values())
    sizes = res.kept["dup_cluster_size"].to_pylist()
    assert m["clusters_with_duplicates"] == sum(s > 1 for s in sizes) >= 6  # >= 2 per chain
    assert m["largest_cluster"] == max(sizes) and m["largest_component"] == 10


def test_dedup_config_keys_are_validated():
    cfg = governance_config_from_dict({"dedup": {"threshold": 0.8, "similarity": "shingles"}})
    assert cfg.dedup.threshold == 0.8 and cfg.dedup.similarity == "shingles"
    for bad, match in (
        ({"threshold": 0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "expected float"),
        ({"similarity": "cosine"}, "similarity: 'signature' or 'shingles'"),
        ({"keep": "newest"}, "keep"),
        ({"verify_threshold": 0.5}, "unknown key"),
    ):
        with pytest.raises(ConfigError, match=match):
            governance_config_from_dict({"dedup": bad})
    with pytest.raises(ConfigError, match="threshold"):
        dedup_stage(_table([("a", "x")]), DedupConfig(threshold=-1.0), "en")


def test_shingle_hashing_does_not_depend_on_batching_and_matches_its_scalar_twin():
    from quality_models.shingles import char_codes, word_token_hashes

    texts = [t for lang in ("de", "ru", "ar", "el", "hi") for t in running_text(lang, "demo")[:6]]
    texts += ["", "   ", "a\u00a0b\tc\nd", "x" * 5000, "Ünïcödé — ŒUVRE, straße!", "ok"]
    cfg = DedupConfig()
    together, has = signatures(texts, False, cfg)
    for i, text in enumerate(texts):  # alone, in a batch of one: the same signature
        alone, has_alone = signatures([text], False, cfg)
        assert has_alone[0] == has[i] and np.array_equal(alone[0], together[i])
    hashes, offsets = word_token_hashes(pa.array(texts))
    for i, text in enumerate(texts):
        expected = [token_hash(t) for t in word_tokens(text)]
        assert hashes[offsets[i] : offsets[i + 1]].tolist() == expected
    han = [t for lang in ("zh", "ja", "th") for t in running_text(lang, "demo")[:4]]
    codes, offsets = char_codes(pa.array(han))
    for i, text in enumerate(han):
        expected = [ord(c) for c in regex.sub(r"[\s\p{P}\p{S}]+", "", text.lower())]
        assert codes[offsets[i] : offsets[i + 1]].tolist() == expected
    sig_chars, _ = signatures(han, True, cfg)
    assert np.array_equal(sig_chars[3], signatures(han[3:4], True, cfg)[0][0])
