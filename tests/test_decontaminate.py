"""Decontamination: planted copies of evaluation items are removed and recorded in the ledger;
everything else is kept; the near-duplicate search agrees with brute force."""

from __future__ import annotations

import itertools
import json

import pyarrow as pa
import pytest

from quality_models.contract import REJECTED_SCHEMA, documents_from_records, make_doc_id
from quality_models.decontaminate import (
    REASON,
    STAGE,
    DecontaminateConfig,
    char_shingles,
    decontaminate,
    jaccard,
    near_duplicate_pairs,
)
from quality_models.shipped_text import running_text


@pytest.fixture(scope="module")
def german() -> list[str]:
    paras = running_text("de", "demo")
    assert len(paras) > 60, "dataset_build German text is needed"
    return paras


def _docs(texts: list[str], lang: str = "de") -> pa.Table:
    return documents_from_records(
        {
            "doc_id": make_doc_id("test:train", i),
            "source": "test:train",
            "text": t,
            "declared_lang": lang,
        }
        for i, t in enumerate(texts)
    )


def test_planted_eval_items_are_removed_and_recorded(german: list[str]) -> None:
    eval_items = german[:20]
    train = german[20:60]
    exact_copy = eval_items[3].upper().replace(".", " . ")  # same text after normalisation
    words = eval_items[7].split()
    words[len(words) // 2] = "Zwischenruf"
    near_copy = " ".join(words)  # one word changed
    train_texts = train[:15] + [exact_copy] + train[15:30] + [near_copy] + train[30:]
    table = _docs(train_texts)
    ids = [f"eval-{i}" for i in range(len(eval_items))]
    res = decontaminate(table, eval_items, DecontaminateConfig(), eval_ids=ids)

    assert res.kept.num_rows + res.rejected.num_rows == table.num_rows
    assert res.rejected.schema == REJECTED_SCHEMA
    rejected = {r["text"]: r for r in res.rejected.to_pylist()}
    assert set(rejected) == {exact_copy, near_copy}
    for text, eval_id, kind in ((exact_copy, "eval-3", "exact"), (near_copy, "eval-7", "near")):
        row = rejected[text]
        assert row["stage"] == STAGE and row["reason"] == REASON == "eval_contamination"
        details = json.loads(row["details"])
        assert details["matched_eval_id"] == eval_id
        assert details["match"] == kind
        assert 0.7 <= details["jaccard"] <= 1.0
        assert row["lang"] == "de"
    assert json.loads(rejected[near_copy]["details"])["jaccard"] < 1.0
    meta = res.metadata
    assert (meta["exact_matches"], meta["near_matches"], meta["rejected"]) == (1, 1, 2)
    assert meta["eval_items"] == 20 and meta["threshold"] == 0.7
    assert sum(meta["jaccard_histogram"].values()) == 2
    assert meta["reasons"] == {"eval_contamination": 2}


def test_other_scripts_and_disabled_stage() -> None:
    eval_items = [
        "リモートファイルが存在し、さらなるリンクもあり得ますが、再帰が禁止されています",
        "Не удалось открыть файл конфигурации для записи",
    ]
    train = [
        "リモートファイルが存在し、さらなるリンクもあり得ますが、再帰は禁止されています",
        "Не удалось открыть файл журнала",
        "ファイルを保存しました",
    ]
    res = decontaminate(_docs(train, "ja"), eval_items)
    assert res.rejected.column("text").to_pylist() == [train[0]]
    off = decontaminate(_docs(train, "ja"), eval_items, DecontaminateConfig(enabled=False))
    assert off.rejected.num_rows == 0 and off.kept.num_rows == 3
    assert decontaminate(_docs(train, "ja"), []).kept.num_rows == 3


def test_near_duplicate_pairs_match_brute_force(german: list[str]) -> None:
    # real sentences plus edited copies, so pairs exist on both sides of the threshold
    base = [s for p in german[:40] for s in p.split(". ") if len(s) > 30][:80]
    edited = []
    for i, s in enumerate(base[:40]):
        w = s.split()
        w[i % len(w)] = "anders"
        if i % 3 == 0:
            w = w[:-2]
        edited.append(" ".join(w))
    texts = base + edited
    found = {(i, j) for i, j, _ in near_duplicate_pairs(texts, threshold=0.7)}
    sets = [char_shingles(t) for t in texts]
    truth = {
        (i, j)
        for i, j in itertools.combinations(range(len(texts)), 2)
        if jaccard(sets[i], sets[j]) >= 0.7
    }
    assert len(truth) >= 10
    assert found == truth


def test_bad_input_gives_clear_errors(german: list[str]) -> None:
    table = _docs(german[:3])
    with pytest.raises(TypeError, match="eval_texts must be strings; item 1 is int"):
        decontaminate(table, ["a text", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="2 eval_ids for 1 eval_texts"):
        decontaminate(table, ["a text"], eval_ids=["a", "b"])
    with pytest.raises(ValueError, match="lacks column"):
        decontaminate(pa.table({"text": ["x"]}), ["x"])
    with pytest.raises(ValueError, match="exceeds num_perm"):
        decontaminate(table, ["x"], DecontaminateConfig(bands=40, rows=4))
    with pytest.raises(ValueError, match="threshold"):
        decontaminate(table, ["x"], DecontaminateConfig(threshold=1.5))
