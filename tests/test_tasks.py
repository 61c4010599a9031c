"""Classification and translation tasks from the system's gettext catalogues: no leakage across
splits (exact and near-duplicate), label integrity, balanced parallel evaluation, placeholder
handling, overlap control, decontamination of a planted item, verbalisers, cards."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import CountVectorizer

from quality_models.decontaminate import char_shingles
from training.gettext_corpus import (
    DEFAULT_LOCALE_DIR,
    build_parallel_corpus,
    find_placeholders,
    placeholder_signature,
)
from training.tasks import (
    PLACEHOLDER_MASK,
    LexicalBaseline,
    TaskConfig,
    TaskError,
    build_tasks,
    classification_card,
    eval_texts,
    flag_report,
    latin_tokens,
    pool_source_table,
    single_token_verbalisers,
    task_text,
    training_records_from_curated,
    translate_train,
    translation_card,
    write_tasks,
    zero_shot_train,
)

LANGS = ("de", "ru", "ja", "zh")
DOMAINS = ("wget", "apt", "gtk")

pytestmark = pytest.mark.skipif(
    not all((DEFAULT_LOCALE_DIR / f"{x}/LC_MESSAGES/wget.mo").exists() for x in ("de", "ru", "ja")),
    reason="the system's gettext catalogues are not installed",
)


def _config(**kw) -> TaskConfig:
    base = dict(
        domains=DOMAINS,
        languages=LANGS,
        test_per_cell=30,
        dev_per_cell=10,
        train_per_cell=60,
        raw_train_per_cell=150,
        translation_train_per_lang=100,
    )
    base.update(kw)
    return TaskConfig(**base)


@pytest.fixture(scope="module")
def corpus():
    # coreutils is read too, so messages shared with it count as duplicates across packages
    return build_parallel_corpus(
        languages=list(LANGS), domains=[*DOMAINS, "coreutils"], progress=False
    )


@pytest.fixture(scope="module")
def task(corpus):
    return build_tasks(corpus, _config())


def test_splits_share_no_message_and_no_near_duplicate(task) -> None:
    splits = task.splits.to_pylist()
    split_of = {}
    for r in splits:
        assert split_of.setdefault(r["key"], r["split"]) == r["split"]  # one split per key
    # every group lies in one split
    group_splits = defaultdict(set)
    for r in splits:
        group_splits[r["group"]].add(r["split"])
    assert all(len(s) == 1 for s in group_splits.values())
    # records: a key never appears in two splits, in either task
    for table in (task.classification, task.translation):
        seen = defaultdict(set)
        for key, split in zip(
            table.column("key").to_pylist(), table.column("split").to_pylist(), strict=True
        ):
            seen[key].add("test" if split == "devtest" else split)
            assert split_of[key] == ("test" if split == "devtest" else split)
        assert all(len(s) == 1 for s in seen.values())
    # near duplicates, checked exactly (no LSH): char 5-gram Jaccard across splits stays < 0.7
    by_split = defaultdict(list)
    for r in splits:
        by_split[r["split"]].append(r["text"])
    vec = CountVectorizer(analyzer=char_shingles, binary=True).fit(
        [t for texts in by_split.values() for t in texts]
    )
    mats = {s: vec.transform(t).astype(np.int32) for s, t in by_split.items()}
    sizes = {s: np.asarray(m.sum(axis=1)).ravel() for s, m in mats.items()}
    for a, b in (("test", "train"), ("dev", "train"), ("test", "dev")):
        inter = (mats[a] @ mats[b].T).toarray()
        union = sizes[a][:, None] + sizes[b][None, :] - inter
        jac = inter / np.maximum(union, 1)
        assert jac.max() < task.config.near_dup_threshold, (a, b, jac.max())
    # the grouping did real work on this data
    assert task.stats["near_duplicate_pairs"] > 0
    assert task.stats["groups_with_several_messages"] > 0


def test_labels_come_from_the_catalogue_of_the_message(task, corpus) -> None:
    origin = defaultdict(set)
    text_of = {}
    for r in corpus.table.to_pylist():
        origin[(r["lang"], r["key"])].add(r["domain"])
        origin[("en", r["key"])].add(r["domain"])
        # when two catalogues of one program hold a message, the first catalogue's wins
        text_of.setdefault((r["lang"], r["domain"], r["key"]), (r["msgstr"], r["mnemonics"]))
        text_of.setdefault(("en", r["domain"], r["key"]), (r["msgid"], r["mnemonics"]))
    cls = task.classification.to_pylist()
    for r in cls:
        assert r["label"] in DOMAINS
        assert r["label"] in origin[(r["lang"], r["key"])]
        raw, mnemonics = text_of[(r["lang"], r["label"], r["key"])]
        assert r["text"] == task_text(raw, mnemonics, "mask")
        if r["split"] != "train":  # evaluation labels are unambiguous
            assert origin[(r["lang"], r["key"])] == {r["label"]}
    assert len({r["id"] for r in cls}) == len(cls)


def test_evaluation_is_parallel_and_balanced(task) -> None:
    cls = task.classification
    for split, per_cell in (("test", 30), ("dev", 10)):
        rows = cls.filter(pc.equal(cls.column("split"), split)).to_pylist()
        cells = Counter((r["lang"], r["label"]) for r in rows)
        assert set(cells.values()) == {per_cell}
        assert {lang for lang, _ in cells} == {"en", *LANGS}
        keys = defaultdict(set)
        for r in rows:
            keys[r["lang"]].add(r["key"])
        assert len({frozenset(v) for v in keys.values()}) == 1  # same items in every language
    train = cls.filter(pc.equal(cls.column("split"), "train")).to_pylist()
    cells = Counter((r["lang"], r["label"]) for r in train)
    assert len(set(cells.values())) == 1 and len(cells) == len(DOMAINS) * (len(LANGS) + 1)
    assert zero_shot_train(cls).num_rows == len(DOMAINS) * next(iter(cells.values()))
    assert translate_train(cls).num_rows == len(train)


def test_placeholders_are_masked_for_classification_and_kept_for_translation(task) -> None:
    cls = task.classification.to_pylist()
    assert all(find_placeholders(r["text"]) == [] for r in cls)
    assert any(PLACEHOLDER_MASK in r["text"] for r in cls)
    mt = task.translation.to_pylist()
    with_ph = [r for r in mt if r["placeholders"]]
    assert with_ph
    for r in mt:
        english = r["source"] if r["src_lang"] == "en" else r["target"]
        other = r["target"] if r["src_lang"] == "en" else r["source"]
        assert r["placeholders"] == find_placeholders(english)
        assert placeholder_signature(find_placeholders(other)) == placeholder_signature(
            r["placeholders"]
        )
    counts = Counter((r["src_lang"], r["tgt_lang"], r["split"]) for r in mt)
    for lang in LANGS:
        for pair in (("en", lang), (lang, "en")):
            assert counts[(*pair, "devtest")] == 30 * len(DOMAINS)
            assert counts[(*pair, "dev")] == 10 * len(DOMAINS)
    with pytest.raises(TaskError, match="placeholder_mode"):
        build_tasks(task.pool, _config(placeholder_mode="drop"))


def test_overlap_control(task) -> None:
    vocab = set()
    for r in task.splits.to_pylist():
        if r["split"] == "train":
            vocab |= latin_tokens(r["text"])
    ev = [r for r in task.classification.to_pylist() if r["split"] != "train"]
    for r in ev:
        shared = latin_tokens(r["text"]) & vocab
        assert r["overlap_controlled"] is (not shared)
        assert not (latin_tokens(r["text_masked"]) & vocab)
    oc = Counter(r["lang"] for r in ev if r["overlap_controlled"])
    assert all(oc[lang] > 0 for lang in ("ru", "ja", "zh"))
    assert oc["ja"] > oc["en"]


def _ingested_pool(task, tmp_path: Path) -> pa.Table:
    """The pool as raw_documents ingests it: a Parquet source, its extra columns passed on."""
    from quality_models.sources import ingest_sources

    path = tmp_path / "task_pool" / "pool.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pool_source_table(task), path)
    return ingest_sources([path.parent], namespace="task_pool").kept


def test_pool_is_a_source_and_training_decontaminates_curated_rows(task, tmp_path) -> None:
    pool = pool_source_table(task)
    assert {"text", "lang", "label", "key", "group", "split", "flag"} <= set(pool.column_names)
    flags = Counter(pool.column("flag").to_pylist())
    # the raw side carries the catalogues' real problems, for governance to find
    assert flags["untranslated"] > 0 and flags["shared_across_domains"] > 0
    assert any(f.startswith("junk_") for f in flags)
    assert set(pool.column("label").to_pylist()) == set(DOMAINS)
    docs = _ingested_pool(task, tmp_path)
    assert docs.num_rows == pool.num_rows and len(set(docs.column("doc_id").to_pylist())) == (
        docs.num_rows
    )
    assert docs.column("label").to_pylist() == pool.column("label").to_pylist()
    docs = docs.set_column(docs.column_names.index("lang"), "lang", docs.column("declared_lang"))

    # plant an evaluation item into the training documents (a copied test message)
    ids, texts = eval_texts(task)
    target = next(i for i, t in zip(ids, texts, strict=True) if len(t) > 40)
    planted_text = texts[ids.index(target)]
    rows = docs.to_pylist()
    victim = next(r for r in rows if r["declared_lang"] == "de" and not r["flag"])
    victim["text"] = planted_text
    planted = pa.Table.from_pylist(rows, schema=docs.schema)
    made = training_records_from_curated(planted, (ids, texts), task.config)
    dec = made.decontamination
    ledger = {r["doc_id"]: r for r in dec.rejected.to_pylist()}
    assert victim["doc_id"] in ledger
    row = ledger[victim["doc_id"]]
    assert row["stage"] == "decontaminate" and row["reason"] == "eval_contamination"
    assert json.loads(row["details"])["matched_eval_id"] == target
    records = made.records
    assert victim["doc_id"] not in set(records.column("id").to_pylist())
    assert set(records.column("split").to_pylist()) == {"train"}
    assert made.curated_rows - dec.rejected.num_rows - made.balanced_out == records.num_rows
    assert set(records.column("weight").to_pylist()) == {1.0}
    flags_by_id = dict(zip(docs.column("doc_id").to_pylist(), docs.column("flag").to_pylist(),
                           strict=True))  # fmt: skip
    report = flag_report(flags_by_id, dec.rejected)
    assert sum(report["decontaminate"].values()) == dec.rejected.num_rows
    # weights follow the duplicate-cluster size when the arm asks for them
    sized = planted.set_column(planted.column_names.index("dup_cluster_size"), "dup_cluster_size",
                               pa.array([3] * planted.num_rows, pa.int32()))  # fmt: skip
    weighted = training_records_from_curated(sized, (ids, texts), task.config, lambda n: n + 0.5)
    assert set(weighted.records.column("weight").to_pylist()) == {3.5}
    # rows without the pool's columns are refused with a clear message
    with pytest.raises(TaskError, match="lack the task pool's column"):
        training_records_from_curated(planted.drop_columns(["label"]), (ids, texts), task.config)


def test_lexical_baseline_and_cards(task, tmp_path: Path) -> None:
    base = LexicalBaseline().fit(task.classification)
    rep = base.report(task.classification).to_pylist()
    assert [r["lang"] for r in rep] == ["en", "de", "ja", "ru", "zh"]
    assert all(r["n"] == 30 * len(DOMAINS) for r in rep)
    assert rep[0]["accuracy"] > 1 / len(DOMAINS)  # learnable from English
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in rep)
    card = classification_card(task, base.report(task.classification))
    for lang in ("en", *LANGS):
        assert f"| {lang} |" in card
    assert "Lexical-overlap baseline" in card and "overlap-controlled" in card
    mt_card = translation_card(task).splitlines()
    for lang in LANGS:
        for pair in (f"en-{lang}", f"{lang}-en"):
            row = next(line for line in mt_card if line.startswith(f"| {pair} |"))
            assert row.endswith(f"| {10 * len(DOMAINS)} | {30 * len(DOMAINS)} |")
    paths = write_tasks(task, tmp_path / "tasks")
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(paths["classification"]), split="train")
    assert ds.num_rows == task.classification.num_rows
    assert set(ds.column_names) >= {"id", "lang", "text", "label", "split", "overlap_controlled"}


def test_verbalisers_are_single_tokens() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # a real BPE vocabulary trained here: common words become one token, rare names do not
    words = ["download", "package", "window", "files", "web", "install"] * 50
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        [" ".join(words), "wgetx coreutils gpg"],
        trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]),
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    cands = {"wget": ("wget", "download"), "apt": ("apt", "package"), "gtk": ("gtk", "window")}
    verb = single_token_verbalisers(hf, ["wget", "apt", "gtk"], cands)
    assert {d: v.word for d, v in verb.items()} == {
        "wget": "download",
        "apt": "package",
        "gtk": "window",
    }
    assert len({v.token_id for v in verb.values()}) == 3
    for v in verb.values():
        assert hf.encode(v.text, add_special_tokens=False) == [v.token_id]
    with pytest.raises(TaskError, match="no single-token verbaliser for domain 'coreutils'"):
        single_token_verbalisers(hf, ["coreutils"], {"coreutils": ("coreutils",)})


def test_bad_requests_give_clear_errors(corpus) -> None:
    with pytest.raises(TaskError, match=r"domain\(s\) nosuchprogram not in the corpus"):
        build_tasks(corpus, _config(domains=("wget", "nosuchprogram")))
    with pytest.raises(TaskError, match=r"language\(s\) ko not in the corpus"):
        build_tasks(corpus, _config(languages=("de", "ko")))
    with pytest.raises(TaskError, match="besides 'en'"):
        build_tasks(corpus, _config(languages=("en", "de")))
    with pytest.raises(TaskError, match="lacks column"):
        build_tasks(pa.table({"key": ["a"]}), _config())


def test_same_seed_same_task_other_seed_other_split(corpus, task) -> None:
    small = dict(test_per_cell=10, dev_per_cell=5, train_per_cell=20, raw_train_per_cell=60)
    a = build_tasks(corpus, _config(**small))
    b = build_tasks(corpus, _config(**small))
    c = build_tasks(corpus, _config(seed=7, **small))
    assert a.classification.equals(b.classification)
    assert a.translation.equals(b.translation)
    keys = lambda t: set(  # noqa: E731
        t.classification.filter(pc.equal(t.classification.column("split"), "test"))
        .column("key")
        .to_pylist()
    )
    assert keys(a) != keys(c)
