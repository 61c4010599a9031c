"""Near-dedup quality: what it removes and whether it should, against the unverified baseline.

    .venv/bin/python bench/dedup_quality.py [--threshold 0.7] [--seed 0]

Arms, run in this process on the same documents:

* ``components`` (the baseline, govtune's former behaviour): every LSH band collision joined by
  union-find, each connected component's first document in keep order kept, nothing verified.
* ``signature`` / ``shingles``: :func:`quality_models.dedup.dedup_stage` with
  ``DedupConfig.similarity`` set so; components split around kept representatives.

Corpora (real running text from ``dataset_build``):

* ``chains``: 20 chains x 10 documents of 180 words, each step edits 2% of the words.
* ``planted``: 160 distinct 120-word documents and a near-copy of every other one with 1-12% of
  its words edited (true Jaccard about 0.95 down to 0.5).
* ``demo``: the demo corpus (``build_demo_corpus(seed=0)``), normalised and split by the planted
  language (no LID), measured on the planter's ``near_dup`` record.

Columns: ``removed`` near-duplicates; how many have a true shingle Jaccard < 0.5 and < the
threshold to the document they name; how many name a document that is not kept; ``recall``: the
known pairs with true J >= threshold (and >= 0.8) that end in one cluster (in a chain no
partition holds every such pair); ``left``: such pairs with both documents still kept;
``precision``: the removals whose true J to the named document is >= threshold (demo: also the
planter's family); and the time ÷ the baseline's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality_models import demo_corpus as demo_module  # noqa: E402
from quality_models.config import DedupConfig  # noqa: E402
from quality_models.contract import content_hash, documents_from_records  # noqa: E402
from quality_models.dedup import (  # noqa: E402
    candidate_pairs,
    components,
    dedup_stage,
    exact_units,
    jaccard,
    keep_order,
    shingle_hashes,
    signatures,
)
from quality_models.normalize import normalize_stage  # noqa: E402
from quality_models.shipped_text import running_text  # noqa: E402
from quality_models.sources import ingest_sources  # noqa: E402

FAMILY_KINDS = ("exact_dup", "near_dup", "mojibake", "nul_bytes")


def _base_docs(n: int, words: int, rng: random.Random) -> list[list[str]]:
    out, cur = [], []
    for p in running_text("en", "demo"):
        cur += p.split()
        if len(cur) >= words:
            out.append(cur[:words])
            cur = []
    rng.shuffle(out)
    return out[:n]


def _edit(words: list[str], fraction: float, rng: random.Random, vocab: list[str]) -> list[str]:
    out = list(words)
    for _ in range(max(1, round(fraction * len(out)))):
        out[rng.randrange(len(out))] = rng.choice(vocab)
    return out


def chain_corpus(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """20 chains x 10 documents, 2% word edits per step; the known pairs: every two documents of
    a chain (their true Jaccard decides which count)."""
    rng = random.Random(seed)
    vocab = sorted({w for p in running_text("en", "demo")[:300] for w in p.split()})
    ids = [f"d{k:04d}" for k in rng.sample(range(10_000), 200)]
    docs, pairs = [], []
    for c, cur in enumerate(_base_docs(20, 180, rng)):
        for s in range(10):
            docs.append((ids[c * 10 + s], " ".join(cur)))
            pairs += [(ids[c * 10 + s], ids[c * 10 + e]) for e in range(s)]
            cur = _edit(cur, 0.02, rng, vocab)
    return docs, pairs


def planted_corpus(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(seed + 1)
    vocab = sorted({w for p in running_text("en", "demo")[:300] for w in p.split()})
    docs, pairs = [], []
    for k, words in enumerate(_base_docs(160, 120, rng)):
        docs.append((f"b{k:03d}", " ".join(words)))
        if k % 2 == 0:
            fraction = (0.01, 0.02, 0.03, 0.05, 0.08, 0.12)[(k // 2) % 6]
            docs.append((f"n{k:03d}", " ".join(_edit(words, fraction, rng, vocab))))
            pairs.append((f"n{k:03d}", f"b{k:03d}"))
    return docs, pairs


def demo_corpus(seed: int) -> tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]], dict]:
    """Per planted language: the normalised demo documents; the planter's near_dup pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        demo_module.build_demo_corpus(tmp, seed=seed)
        planted = {r["doc_id"]: r for r in pq.read_table(Path(tmp) / "planted.parquet").to_pylist()}
        # the planter names documents in the demo's namespace where the tree has one
        namespace = getattr(demo_module, "DEMO_NAMESPACE", None)
        extra = {"namespace": namespace} if namespace else {}
        raw = ingest_sources([Path(tmp) / "sources"], **extra)
    kept = normalize_stage(raw.kept).kept
    by_lang: dict[str, list[tuple[str, str]]] = {}
    for d, t in zip(kept["doc_id"].to_pylist(), kept["text"].to_pylist(), strict=True):
        lang = planted.get(d, {}).get("lang")
        if lang:
            by_lang.setdefault(lang, []).append((d, t))
    pairs = [(d, p["of"]) for d, p in planted.items() if p["kind"] == "near_dup"]
    return by_lang, pairs, planted


def baseline(docs: list[tuple[str, str]], cfg: DedupConfig, lang: str) -> dict[str, str]:
    """The former behaviour: LSH components, unsplit; doc_id -> the kept doc_id it maps to."""
    ids, texts = [d for d, _ in docs], [t for _, t in docs]
    order = keep_order(ids, [len(t) for t in texts], cfg.keep)
    unit_of, unit_doc = exact_units([content_hash(t) for t in texts], order)
    use_chars = lang in cfg.char_languages
    sig, has = signatures([texts[i] for i in unit_doc], use_chars, cfg)
    labels = components(len(unit_doc), candidate_pairs(sig, has, cfg))  # lowest = kept first
    final = unit_doc[labels[unit_of]]
    return {ids[i]: ids[int(final[i])] for i in range(len(ids))}


def verified(docs: list[tuple[str, str]], cfg: DedupConfig, lang: str) -> dict[str, str]:
    table = documents_from_records({"doc_id": d, "source": "b", "text": t, "lang": lang}
                                   for d, t in docs)  # fmt: skip
    res = dedup_stage(table, cfg, lang)
    out = {d: d for d in res.kept["doc_id"].to_pylist()}
    for r in res.rejected.to_pylist():
        out[r["doc_id"]] = json.loads(r["details"])["duplicate_of"]
    return out


def measure(arm, corpora, pairs, cfg, planted=None) -> dict:
    """Run one arm over ``corpora`` (lang -> docs) and score it against the known ``pairs``."""
    text = {d: t for docs in corpora.values() for d, t in docs}
    lang_of = {d: lang for lang, docs in corpora.items() for d, _ in docs}
    t0 = time.perf_counter()
    cluster: dict[str, str] = {}
    for lang, docs in corpora.items():
        cluster.update(arm(docs, cfg, lang))
    seconds = time.perf_counter() - t0

    def true_j(a: str, b: str) -> float:
        chars = lang_of[a] in cfg.char_languages
        return jaccard(shingle_hashes(text[a], chars, cfg), shingle_hashes(text[b], chars, cfg))

    kept = {d for d, r in cluster.items() if d == r}
    near = [(d, r) for d, r in cluster.items() if d != r and text[d] != text[r]]
    js = np.array([true_j(d, r) for d, r in near])
    known = [(a, b, true_j(a, b)) for a, b in pairs if a in cluster and b in cluster]
    found = np.array([cluster[a] == cluster[b] for a, b, _ in known])
    jk = np.array([j for _, _, j in known])
    row = {
        "removed": len(near),
        "J<0.5": int((js < 0.5).sum()),
        "J<t": int((js < cfg.threshold).sum()),
        "names unkept": sum(r not in kept for _, r in near),
        "recall": float(found[jk >= cfg.threshold].mean()),
        "left": sum(a in kept and b in kept for a, b, j in known if j >= cfg.threshold),
        "recall J>=0.8": float(found[jk >= 0.8].mean()),
        "precision": float((js >= cfg.threshold).mean()) if len(js) else 1.0,
        "pairs J>=t": int((jk >= cfg.threshold).sum()),
        "seconds": seconds,
    }
    if planted is not None:
        fam = {d: (p["of"] if p["kind"] in FAMILY_KINDS else d) for d, p in planted.items()}
        row["family precision"] = float(np.mean([fam.get(d) == fam.get(r) for d, r in near]))
        row["recall all"] = float(found.mean())
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threshold", type=float, default=DedupConfig().threshold)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    chains, chain_pairs = chain_corpus(args.seed)
    planted_docs, planted_pairs = planted_corpus(args.seed)
    demo, demo_pairs, planted = demo_corpus(args.seed)
    corpora = {
        "chains": ({"en": chains}, chain_pairs, None),
        "planted": ({"en": planted_docs}, planted_pairs, None),
        "demo": (demo, demo_pairs, planted),
    }
    cfg = {
        "components": DedupConfig(threshold=args.threshold),
        "signature": DedupConfig(threshold=args.threshold, similarity="signature"),
        "shingles": DedupConfig(threshold=args.threshold, similarity="shingles"),
    }
    arms = {"components": baseline, "signature": verified, "shingles": verified}
    cols = ["removed", "J<0.5", "J<t", "names unkept", "pairs J>=t", "recall", "recall J>=0.8",
            "left", "precision", "family precision", "recall all"]  # fmt: skip
    print(f"threshold {args.threshold}, 14 x 8 bands: P(candidate | J = t) = "
          f"{cfg['signature'].candidate_probability(args.threshold):.3f}\n")  # fmt: skip
    print("| corpus | arm | " + " | ".join(cols) + " | time ÷ baseline |")
    print("|---" * (len(cols) + 3) + "|")
    for name, (docs, pairs, plants) in corpora.items():
        base_seconds = None
        for arm, fn in arms.items():
            fn(next(iter(docs.values()))[:50], cfg[arm], next(iter(docs)))  # warm-up
            row = measure(fn, docs, pairs, cfg[arm], plants)
            base_seconds = base_seconds or row["seconds"]
            cells = []
            for c in cols:
                v = row.get(c, "")
                cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
            ratio = row["seconds"] / base_seconds
            print(f"| {name} | {arm} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
