"""Loaders for the public benchmarks the seeds evaluate on, mapped to the task schemas.

* **XNLI** (``facebook/xnli``): premise/hypothesis pairs with three labels, the same items in
  15 languages -> classification records (``CLASSIFICATION_SCHEMA`` plus ``premise`` and
  ``hypothesis``).
* **FLORES+** (``openlanguagedata/flores_plus``): the same sentences in 200+ languages, one
  config per language and script (``deu_Latn``), splits ``dev`` and ``devtest`` -> translation
  records (``TRANSLATION_SCHEMA``), paired by sentence ``id``.

The loaders call ``datasets.load_dataset`` by name (Hub access needed; FLORES+ is gated: accept
its terms on the Hub and log in). The mapping functions take a ``datasets.Dataset``, so they
run on any local file written in the Hub's schema; tests never touch the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from quality_models.contract import make_doc_id

from .tasks import CLASSIFICATION_SCHEMA, SOURCE_LANG, TRANSLATION_SCHEMA

XNLI_NAME = "facebook/xnli"
XNLI_LANGUAGES = (
    "ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh",
)  # fmt: skip
XNLI_LABELS = ("entailment", "neutral", "contradiction")
XNLI_SPLITS = {"train": "train", "validation": "dev", "test": "test"}
# one-word label names for scoring one token per class (see tasks.single_token_verbalisers)
XNLI_VERBALISER_CANDIDATES = {
    "entailment": ("yes", "true", "entailment", "right"),
    "neutral": ("maybe", "neutral", "perhaps", "unknown"),
    "contradiction": ("no", "false", "contradiction", "wrong"),
}

FLORES_NAME = "openlanguagedata/flores_plus"
FLORES_SPLITS = ("dev", "devtest")
# lid.176 code -> FLORES+ config (ISO 639-3 + ISO 15924). Arabic is Modern Standard (arb),
# Chinese is Mandarin in simplified script (cmn_Hans), Persian is Iranian (pes).
FLORES_CODES = {
    "en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn", "it": "ita_Latn",
    "pt": "por_Latn", "pl": "pol_Latn", "tr": "tur_Latn", "vi": "vie_Latn", "nl": "nld_Latn",
    "cs": "ces_Latn", "sv": "swe_Latn", "id": "ind_Latn", "sw": "swh_Latn", "ru": "rus_Cyrl",
    "uk": "ukr_Cyrl", "bg": "bul_Cyrl", "el": "ell_Grek", "ar": "arb_Arab", "fa": "pes_Arab",
    "ur": "urd_Arab", "he": "heb_Hebr", "hi": "hin_Deva", "zh": "cmn_Hans", "ja": "jpn_Jpan",
    "ko": "kor_Hang", "th": "tha_Thai",
}  # fmt: skip

XNLI_SCHEMA = pa.schema(
    list(CLASSIFICATION_SCHEMA) + [("premise", pa.string()), ("hypothesis", pa.string())]
)

LoadFn = Callable[..., Any]


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded or mapped; the message says why and what to do."""


def _require_columns(ds: Any, columns: Sequence[str], what: str) -> None:
    names = getattr(ds, "column_names", None)
    if names is None:
        raise BenchmarkError(f"{what}: expected a datasets.Dataset, got {type(ds).__name__}")
    missing = [c for c in columns if c not in names]
    if missing:
        raise BenchmarkError(
            f"{what}: dataset lacks column(s) {', '.join(missing)}; it has {', '.join(names)}"
        )


def _label_names(ds: Any) -> list[str]:
    feature = getattr(ds, "features", {}).get("label")
    names = getattr(feature, "names", None)
    return list(names) if names else list(XNLI_LABELS)


def _pick_language(value: Any, lang: str, field: str) -> str:
    """Per-language configs hold strings; ``all_languages`` holds a dict per row."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if "language" in value and "translation" in value:  # hypothesis in all_languages
            langs, texts = list(value["language"]), list(value["translation"])
            if lang in langs:
                return texts[langs.index(lang)]
        elif lang in value:  # premise in all_languages
            return value[lang]
        raise BenchmarkError(f"XNLI {field} has no {lang!r} text")
    raise BenchmarkError(f"XNLI {field} must be a string or a per-language mapping")


def xnli_records(ds: Any, lang: str, split: str) -> pa.Table:
    """Map one XNLI split of one language (Hub schema) to classification records.

    ``text`` is premise and hypothesis on two lines; ``key`` is the row index, which aligns
    the same item across languages (XNLI's dev and test sets are parallel). Rows with a label
    outside the class names (``-1``, unlabelled) are dropped.
    """
    if lang not in XNLI_LANGUAGES:
        raise BenchmarkError(f"XNLI has no language {lang!r}; it has {', '.join(XNLI_LANGUAGES)}")
    if split not in XNLI_SPLITS:
        raise BenchmarkError(f"XNLI splits are {', '.join(XNLI_SPLITS)}, not {split!r}")
    _require_columns(ds, ("premise", "hypothesis", "label"), f"XNLI {lang}/{split}")
    names = _label_names(ds)
    rows = []
    for i, ex in enumerate(ds):
        label = ex["label"]
        if isinstance(label, str):
            if label not in names:
                continue
        elif not isinstance(label, int) or not 0 <= label < len(names):
            continue
        else:
            label = names[label]
        premise = _pick_language(ex["premise"], lang, "premise")
        hypothesis = _pick_language(ex["hypothesis"], lang, "hypothesis")
        rows.append(
            {
                "id": make_doc_id(f"xnli:{lang}:{split}", i),
                "lang": lang,
                "text": f"{premise}\n{hypothesis}",
                "label": label,
                "split": XNLI_SPLITS[split],
                "overlap_controlled": None,
                "text_masked": None,
                "key": f"xnli-{split}-{i}",
                "group": f"xnli-{split}-{i}",
                "premise": premise,
                "hypothesis": hypothesis,
            }
        )
    return pa.Table.from_pylist(rows, schema=XNLI_SCHEMA)


def _code(lang: str) -> str:
    code = FLORES_CODES.get(lang)
    if code is None:
        raise BenchmarkError(
            f"no FLORES+ config known for language {lang!r}; known: {', '.join(FLORES_CODES)} "
            "(add its ISO 639-3_script code to FLORES_CODES)"
        )
    return code


def flores_pairs(src: Any, tgt: Any, src_lang: str, tgt_lang: str, split: str) -> pa.Table:
    """Pair two FLORES+ language splits (Hub schema) by sentence ``id`` into translation records.

    When the rows carry ``iso_639_3``/``iso_15924``, they must match the expected config, so a
    swapped file is caught instead of scored. Sentences present on one side only are an error:
    FLORES+ is fully parallel, so a gap means a broken file.
    """
    if split not in FLORES_SPLITS:
        raise BenchmarkError(f"FLORES+ splits are {', '.join(FLORES_SPLITS)}, not {split!r}")
    sides = {}
    for ds, lang in ((src, src_lang), (tgt, tgt_lang)):
        what = f"FLORES+ {lang}/{split}"
        _require_columns(ds, ("id", "text"), what)
        code = _code(lang)
        iso, script = code.split("_")
        texts: dict[Any, str] = {}
        for ex in ds:
            if "iso_639_3" in ex and ex["iso_639_3"] and ex["iso_639_3"] != iso:
                raise BenchmarkError(f"{what}: rows are {ex['iso_639_3']!r}, expected {iso!r}")
            if "iso_15924" in ex and ex["iso_15924"] and ex["iso_15924"] != script:
                raise BenchmarkError(
                    f"{what}: rows are in script {ex['iso_15924']!r}, expected {script!r}"
                )
            if ex["id"] in texts:
                raise BenchmarkError(f"{what}: sentence id {ex['id']} appears twice")
            texts[ex["id"]] = ex["text"]
        sides[lang] = texts
    s, t = sides[src_lang], sides[tgt_lang]
    if set(s) != set(t):
        only = sorted(set(s) ^ set(t), key=str)[:5]
        raise BenchmarkError(
            f"FLORES+ {src_lang}/{tgt_lang} {split}: sentence ids differ between the two sides "
            f"(e.g. {only}); FLORES+ is fully parallel, so one file is incomplete"
        )
    rows = [
        {
            "id": make_doc_id(f"flores:{src_lang}-{tgt_lang}:{split}", i),
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "source": s[i],
            "target": t[i],
            "split": split,
            "domain": "flores",
            "key": f"flores-{split}-{i}",
            "placeholders": [],
        }
        for i in sorted(s, key=lambda x: (str(type(x)), x))
    ]
    return pa.Table.from_pylist(rows, schema=TRANSLATION_SCHEMA)


def _load(load_fn: LoadFn | None, name: str, config: str, split: str, **kwargs: Any) -> Any:
    if load_fn is None:
        from datasets import load_dataset

        load_fn = load_dataset
    try:
        return load_fn(name, config, split=split, **kwargs)
    except Exception as exc:  # datasets raises many types; the user needs one clear message
        hint = (
            " FLORES+ is gated: accept its terms on the Hub and log in (huggingface-cli login)."
            if name == FLORES_NAME
            else ""
        )
        raise BenchmarkError(
            f"could not load {name} (config {config!r}, split {split!r}): "
            f"{type(exc).__name__}: {exc}. Loading needs Hugging Face Hub access or a warm "
            f"local cache.{hint}"
        ) from exc


def load_xnli(
    languages: Sequence[str],
    splits: Sequence[str] = ("validation", "test"),
    load_fn: LoadFn | None = None,
    **load_kwargs: Any,
) -> pa.Table:
    """XNLI for ``languages`` as classification records (``split``: train/dev/test).

    ``load_fn`` defaults to ``datasets.load_dataset``; ``load_kwargs`` go to it (``cache_dir``,
    ``revision``...).
    """
    unknown = [lang for lang in languages if lang not in XNLI_LANGUAGES]
    if unknown:
        raise BenchmarkError(
            f"XNLI has no language(s) {', '.join(unknown)}; it has {', '.join(XNLI_LANGUAGES)}"
        )
    tables = [
        xnli_records(_load(load_fn, XNLI_NAME, lang, split, **load_kwargs), lang, split)
        for lang in languages
        for split in splits
    ]
    return pa.concat_tables(tables) if tables else XNLI_SCHEMA.empty_table()


def load_flores_plus(
    languages: Sequence[str],
    splits: Sequence[str] = FLORES_SPLITS,
    source: str = SOURCE_LANG,
    load_fn: LoadFn | None = None,
    **load_kwargs: Any,
) -> pa.Table:
    """FLORES+ pairs ``source``->xx and xx->``source`` for every language in ``languages``."""
    for lang in (source, *languages):
        _code(lang)
    tables = []
    for split in splits:
        src = _load(load_fn, FLORES_NAME, _code(source), split, **load_kwargs)
        for lang in languages:
            if lang == source:
                continue
            tgt = _load(load_fn, FLORES_NAME, _code(lang), split, **load_kwargs)
            tables.append(flores_pairs(src, tgt, source, lang, split))
            tables.append(flores_pairs(tgt, src, lang, source, split))
    return pa.concat_tables(tables) if tables else TRANSLATION_SCHEMA.empty_table()
