"""XNLI and FLORES+ loaders: the Hub schemas mapped to the task schemas, on small local files
written in those schemas. No test touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import ClassLabel, Dataset, Features, Value, load_dataset  # noqa: E402

from training.benchmarks import (  # noqa: E402
    FLORES_NAME,
    XNLI_LABELS,
    XNLI_NAME,
    XNLI_SCHEMA,
    BenchmarkError,
    flores_pairs,
    load_flores_plus,
    load_xnli,
    xnli_records,
)
from training.tasks import TRANSLATION_SCHEMA  # noqa: E402

XNLI_FEATURES = Features(
    {
        "premise": Value("string"),
        "hypothesis": Value("string"),
        "label": ClassLabel(names=list(XNLI_LABELS)),
    }
)
XNLI_ROWS = {
    "en": (
        ["The cat sat on the mat.", "He bought a car.", "It rained all day."],
        ["A cat is sitting.", "He owns nothing.", "The weather was dry."],
    ),
    "de": (
        ["Die Katze saß auf der Matte.", "Er kaufte ein Auto.", "Es regnete den ganzen Tag."],
        ["Eine Katze sitzt.", "Er besitzt nichts.", "Das Wetter war trocken."],
    ),
}
LABELS = [0, 2, 2]


def _xnli_file(tmp: Path, lang: str, split: str) -> Path:
    premise, hypothesis = XNLI_ROWS[lang]
    ds = Dataset.from_dict(
        {"premise": premise, "hypothesis": hypothesis, "label": LABELS}, features=XNLI_FEATURES
    )
    path = tmp / "xnli" / lang / f"{split}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


FLORES_TEXT = {
    "eng_Latn": ["The meeting starts at nine.", "Rivers flow to the sea.", "Bread is baked."],
    "deu_Latn": ["Die Sitzung beginnt um neun.", "Flüsse fließen ins Meer.", "Brot wird gebacken."],
    "jpn_Jpan": ["会議は九時に始まります。", "川は海へ流れる。", "パンが焼かれる。"],
}


def _flores_file(tmp: Path, code: str, split: str, order=(0, 1, 2), iso=None) -> Path:
    lang, script = code.split("_")
    texts = FLORES_TEXT[code]
    ds = Dataset.from_dict(
        {
            "id": [i for i in order],
            "iso_639_3": [iso or lang] * len(order),
            "iso_15924": [script] * len(order),
            "glottocode": ["xxxx1234"] * len(order),
            "text": [texts[i] for i in order],
            "url": ["https://example.org"] * len(order),
            "domain": ["wikinews"] * len(order),
            "topic": ["misc"] * len(order),
            "has_image": ["no"] * len(order),
            "has_hyperlink": ["no"] * len(order),
            "last_updated": ["2.0"] * len(order),
        }
    )
    path = tmp / "flores" / code / f"{split}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def _local(path: Path, split: str = "train"):
    return load_dataset("parquet", data_files=str(path), split=split)


def test_xnli_mapping(tmp_path: Path) -> None:
    ds = _local(_xnli_file(tmp_path, "de", "test"))
    assert ds.features["label"].names == list(XNLI_LABELS)  # ClassLabel survives the file
    table = xnli_records(ds, "de", "test")
    assert table.schema == XNLI_SCHEMA
    rows = table.to_pylist()
    assert [r["label"] for r in rows] == ["entailment", "contradiction", "contradiction"]
    assert rows[0]["text"] == "Die Katze saß auf der Matte.\nEine Katze sitzt."
    assert {r["split"] for r in rows} == {"test"}
    assert [r["key"] for r in rows] == ["xnli-test-0", "xnli-test-1", "xnli-test-2"]
    assert len({r["id"] for r in rows}) == 3
    dev = xnli_records(_local(_xnli_file(tmp_path, "de", "validation")), "de", "validation")
    assert set(dev.column("split").to_pylist()) == {"dev"}


def test_xnli_all_languages_rows_and_unlabelled(tmp_path: Path) -> None:
    rows = [
        {
            "premise": {"de": "Die Katze saß.", "en": "The cat sat."},
            "hypothesis": {"language": ["de", "en"], "translation": ["Sie saß.", "It sat."]},
            "label": 0,
        },
        {
            "premise": {"de": "Unbekannt.", "en": "Unknown."},
            "hypothesis": {"language": ["de", "en"], "translation": ["Nichts.", "Nothing."]},
            "label": -1,
        },
    ]
    ds = Dataset.from_list(rows)
    table = xnli_records(ds, "de", "validation")
    assert table.num_rows == 1  # the unlabelled row is dropped
    assert table.column("premise").to_pylist() == ["Die Katze saß."]
    assert table.column("hypothesis").to_pylist() == ["Sie saß."]
    assert table.column("label").to_pylist() == ["entailment"]  # names default to XNLI's
    with pytest.raises(BenchmarkError, match="no 'fr' text"):
        xnli_records(Dataset.from_list(rows[:1]), "fr", "validation")


def test_flores_pairs_by_id(tmp_path: Path) -> None:
    en = _local(_flores_file(tmp_path, "eng_Latn", "devtest"))
    de = _local(_flores_file(tmp_path, "deu_Latn", "devtest", order=(2, 0, 1)))  # shuffled
    table = flores_pairs(en, de, "en", "de", "devtest")
    assert table.schema == TRANSLATION_SCHEMA
    rows = table.to_pylist()
    assert [(r["source"], r["target"]) for r in rows] == list(
        zip(FLORES_TEXT["eng_Latn"], FLORES_TEXT["deu_Latn"], strict=True)
    )
    assert {(r["src_lang"], r["tgt_lang"], r["split"]) for r in rows} == {("en", "de", "devtest")}
    back = flores_pairs(de, en, "de", "en", "devtest").to_pylist()
    assert back[1]["source"] == FLORES_TEXT["deu_Latn"][1]
    assert back[1]["target"] == FLORES_TEXT["eng_Latn"][1]


def test_flores_broken_files_are_caught(tmp_path: Path) -> None:
    en = _local(_flores_file(tmp_path, "eng_Latn", "dev"))
    short = _local(_flores_file(tmp_path, "deu_Latn", "dev", order=(0, 1)))
    with pytest.raises(BenchmarkError, match="sentence ids differ"):
        flores_pairs(en, short, "en", "de", "dev")
    wrong = _local(_flores_file(tmp_path / "w", "deu_Latn", "dev", iso="fra"))
    with pytest.raises(BenchmarkError, match="rows are 'fra', expected 'deu'"):
        flores_pairs(en, wrong, "en", "de", "dev")
    with pytest.raises(BenchmarkError, match="lacks column"):
        flores_pairs(en, en.remove_columns(["text"]), "en", "de", "dev")
    with pytest.raises(BenchmarkError, match="splits are dev, devtest"):
        flores_pairs(en, en, "en", "de", "test")
    with pytest.raises(BenchmarkError, match="no FLORES\\+ config known for language 'xx'"):
        flores_pairs(en, en, "en", "xx", "dev")


def test_loaders_call_the_hub_names(tmp_path: Path) -> None:
    calls = []

    def local_hub(name, config, split):
        calls.append((name, config, split))
        if name == XNLI_NAME:
            return _local(_xnli_file(tmp_path, config, split))
        return _local(_flores_file(tmp_path, config, split))

    xnli = load_xnli(["en", "de"], splits=("test",), load_fn=local_hub)
    assert calls == [(XNLI_NAME, "en", "test"), (XNLI_NAME, "de", "test")]
    assert xnli.num_rows == 6
    # the same items line up across languages
    by_lang = {
        lang: [r["key"] for r in xnli.to_pylist() if r["lang"] == lang] for lang in ("en", "de")
    }
    assert by_lang["en"] == by_lang["de"]

    calls.clear()
    flores = load_flores_plus(["de", "ja"], splits=("dev",), load_fn=local_hub)
    assert (FLORES_NAME, "eng_Latn", "dev") in calls
    assert (FLORES_NAME, "jpn_Jpan", "dev") in calls
    pairs = {(r["src_lang"], r["tgt_lang"]) for r in flores.to_pylist()}
    assert pairs == {("en", "de"), ("de", "en"), ("en", "ja"), ("ja", "en")}
    assert flores.num_rows == 4 * 3


def test_loader_errors_are_clear() -> None:
    def offline(name, config, split):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    with pytest.raises(BenchmarkError, match=r"could not load facebook/xnli \(config 'de'"):
        load_xnli(["de"], load_fn=offline)
    with pytest.raises(BenchmarkError, match="FLORES\\+ is gated"):
        load_flores_plus(["de"], load_fn=offline)
    with pytest.raises(BenchmarkError, match="XNLI has no language"):
        load_xnli(["ja"], load_fn=offline)
    with pytest.raises(BenchmarkError, match="expected a datasets.Dataset"):
        xnli_records([{"premise": "a"}], "de", "test")
