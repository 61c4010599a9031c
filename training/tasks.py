"""Classification and translation tasks built from the gettext parallel corpus.

**Cross-lingual message-domain classification** (the XNLI protocol on real labels): each
message is labelled with the program it belongs to; a model trains on English messages and is
evaluated zero-shot on their human translations (a translate-train variant adds the translated
training messages). **Translation** (the FLORES protocol): en->xx and xx->en ``dev`` and
``devtest`` pairs for the same languages and messages.

Leakage control. Splits are made per source message, never per row: every translation of a
message lands in the split of its ``msgid``, and near-duplicate msgids (MinHash LSH on
character 5-grams, verified Jaccard >= 0.7) are grouped and assigned together. Evaluation
items are *parallel*: each one has a clean human translation in every evaluation language, so
every (language, domain) cell has the same size and the languages are compared on the same
messages.

Lexical overlap. Identifiers, SQL keywords, option names and URLs stay untranslated, so a
character n-gram classifier trained on English already scores well above chance on the
translations. Every evaluation item therefore carries ``overlap_controlled`` (it shares no
Latin-script token of 3+ characters with any English training message) and ``text_masked``
(those shared tokens masked), and ``LexicalBaseline`` gives the number to report beside every
result.

Governance. The training side is exported as a governance *source* (``pool_source_table``)
*with* its real problems (untranslated entries, messages shared by several programs, junk and
placeholder-only entries): it enters the asset graph as the ``task_pool`` source partition of
``raw_documents`` and flows through the same stages as any corpus, so each governance variant
produces its own training set, which ``training_records_from_curated`` only decontaminates and
balances. The task's own ``train`` split is the builder-filtered variant.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import binomtest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

from quality_models.contract import (
    StageResult,
    documents_from_records,
    make_doc_id,
    write_parquet_atomic,
    write_text_atomic,
)
from quality_models.decontaminate import (
    DecontaminateConfig,
    decontaminate,
    near_duplicate_pairs,
    normalise_for_match,
)

from .gettext_corpus import (
    PLACEHOLDER_RE,
    ParallelCorpus,
    build_parallel_corpus,
    find_placeholders,
    strip_mnemonics,
)

SOURCE_LANG = "en"
# Five programs whose messages are translated in every default language (checked on Debian 13:
# >= 400 clean, parallel messages each) and whose subjects differ: a database, a GUI toolkit,
# file utilities, a web downloader and a package manager.
DEFAULT_DOMAINS = ("postgres", "gtk", "coreutils", "wget", "apt")
# Nine languages, five of them in non-Latin scripts (Cyrillic, Han, Japanese, Hangul). Polish
# lacks PostgreSQL messages; Greek, Arabic, Hindi, Thai and Hebrew lack coreutils or wget.
DEFAULT_LANGUAGES = ("de", "fr", "es", "it", "ru", "uk", "zh", "ja", "ko")

LANGUAGE_SCRIPTS = {
    "en": "Latn", "de": "Latn", "fr": "Latn", "es": "Latn", "it": "Latn", "pt": "Latn",
    "pl": "Latn", "tr": "Latn", "vi": "Latn", "nl": "Latn", "cs": "Latn", "sv": "Latn",
    "ru": "Cyrl", "uk": "Cyrl", "bg": "Cyrl", "sr": "Cyrl", "el": "Grek", "ar": "Arab",
    "fa": "Arab", "he": "Hebr", "hi": "Deva", "zh": "Hani", "ja": "Jpan", "ko": "Hang",
    "th": "Thai",
}  # fmt: skip
SCRIPT_PATTERNS = {
    "Cyrl": re.compile(r"[\u0400-\u04FF]"),
    "Grek": re.compile(r"[\u0370-\u03FF\u1F00-\u1FFF]"),
    "Arab": re.compile(r"[\u0600-\u06FF]"),
    "Hebr": re.compile(r"[\u0590-\u05FF]"),
    "Deva": re.compile(r"[\u0900-\u097F]"),
    "Hani": re.compile(r"[\u3400-\u4DBF\u4E00-\u9FFF]"),
    "Jpan": re.compile(r"[\u3040-\u30FF\u3400-\u4DBF\u4E00-\u9FFF]"),
    "Hang": re.compile(r"[\uAC00-\uD7AF\u1100-\u11FF\u3130-\u318F]"),
    "Thai": re.compile(r"[\u0E00-\u0E7F]"),
}

# Single-word label names per domain, best first. Which one is a single token depends on the
# model's vocabulary: ``single_token_verbalisers`` picks and records it.
CANDIDATE_VERBALISERS: dict[str, tuple[str, ...]] = {
    "postgres": ("postgres", "database", "SQL", "sql", "db", "query", "server"),
    "gtk": ("gtk", "GTK", "window", "GUI", "widget", "interface", "desktop"),
    "coreutils": ("coreutils", "files", "file", "shell", "unix", "command", "utility"),
    "wget": ("wget", "download", "web", "http", "HTTP", "internet", "network"),
    "apt": ("apt", "package", "packages", "debian", "install", "repository"),
    "gnupg": ("gpg", "gnupg", "key", "crypto", "encryption", "signature"),
    "git": ("git", "commit", "repository", "branch", "merge"),
    "libc": ("libc", "system", "kernel", "locale"),
    "glib": ("glib", "gio", "library", "dbus"),
    "tar": ("tar", "archive", "archives", "backup"),
    "bash": ("bash", "shell", "script", "terminal"),
    "shared-mime-info": ("mime", "format", "filetype", "document"),
    "gettext": ("gettext", "translation", "catalog", "message"),
    "binutils": ("binutils", "linker", "assembler", "object"),
}

PLACEHOLDER_MASK = "<var>"
OVERLAP_MASK = "<tok>"
_LATIN_TOKEN = re.compile(r"[A-Za-z\u00C0-\u024F]{3,}")
_SPACE = re.compile(r"\s+")

CLASSIFICATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("lang", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("overlap_controlled", pa.bool_()),  # eval items only; null on train rows
        ("text_masked", pa.string()),  # eval items only: tokens shared with English train masked
        ("key", pa.string()),  # source-message key: the same item across languages
        ("group", pa.string()),  # near-duplicate group of the source message
    ]
)
TRANSLATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("src_lang", pa.string()),
        ("tgt_lang", pa.string()),
        ("source", pa.string()),
        ("target", pa.string()),
        ("split", pa.string()),  # train | dev | devtest
        ("domain", pa.string()),
        ("key", pa.string()),
        ("placeholders", pa.list_(pa.string())),
    ]
)
POOL_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("lang", pa.string()),
        ("domain", pa.string()),
        ("key", pa.string()),
        ("text", pa.string()),
        ("flag", pa.string()),  # "" = clean by the builder's rules, else the first problem
    ]
)


class TaskError(ValueError):
    """The corpus cannot give the requested task; the message says what is missing."""


@dataclass
class TaskConfig:
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    languages: tuple[str, ...] = DEFAULT_LANGUAGES  # evaluation languages besides English
    seed: int = 0
    test_per_cell: int = 100  # test items per (language, domain): 500 per language by default
    dev_per_cell: int = 40
    train_per_cell: int = 300  # final cap of every (language, domain) training cell
    raw_train_per_cell: int = 1000  # pre-governance pool per cell (sampled, problems included)
    translation_train_per_lang: int = 2000
    max_chars: int = 200  # longer messages (multi-line --help texts) are left out
    placeholder_mode: str = "mask"  # classification text: "mask" | "keep" | "strip"
    near_dup_threshold: float = 0.7
    near_dup_ngram: int = 5
    num_perm: int = 128
    bands: int = 32
    rows: int = 4
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)

    def validate(self) -> None:
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise TaskError(f"domains must be distinct and non-empty, got {self.domains}")
        if len(self.domains) < 2:
            raise TaskError("classification needs at least two domains")
        if not self.languages or SOURCE_LANG in self.languages:
            raise TaskError(
                f"languages are the evaluation languages besides {SOURCE_LANG!r}, "
                f"got {self.languages}"
            )
        if self.placeholder_mode not in ("mask", "keep", "strip"):
            raise TaskError(
                f"placeholder_mode must be 'mask', 'keep' or 'strip', not {self.placeholder_mode!r}"
            )
        for name in ("test_per_cell", "dev_per_cell", "train_per_cell", "raw_train_per_cell"):
            if getattr(self, name) < 1:
                raise TaskError(f"{name} must be >= 1")
        if self.bands * self.rows > self.num_perm:
            raise TaskError("bands x rows exceeds num_perm")


@dataclass
class TaskSet:
    """Everything ``build_tasks`` makes; ``write_tasks`` writes it."""

    classification: pa.Table  # CLASSIFICATION_SCHEMA, train/dev/test
    translation: pa.Table  # TRANSLATION_SCHEMA, train/dev/devtest
    pool: pa.Table  # POOL_SCHEMA: the raw training side, problems included
    splits: pa.Table  # key, domain, group, text, split, eval_item for every source message
    ledger: pa.Table  # REJECTED_SCHEMA: what the builder and decontamination removed
    config: TaskConfig
    stats: dict[str, Any] = field(default_factory=dict)
    english_vocab: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- text handling


def task_text(text: str, mnemonics: bool = False, placeholder_mode: str = "keep") -> str:
    """The text a model sees: NFC, accelerator marks removed, placeholders handled, one line."""
    text = unicodedata.normalize("NFC", text)
    if mnemonics:
        text = strip_mnemonics(text)
    if placeholder_mode == "mask":
        text = PLACEHOLDER_RE.sub(PLACEHOLDER_MASK, text.replace("%%", "%"))
    elif placeholder_mode == "strip":
        text = PLACEHOLDER_RE.sub(" ", text.replace("%%", "%"))
    return _SPACE.sub(" ", text).strip()


def has_script(text: str, lang: str) -> bool:
    """Whether ``text`` holds letters of the script ``lang`` is written in (Latin: any letter)."""
    pattern = SCRIPT_PATTERNS.get(LANGUAGE_SCRIPTS.get(lang, "Latn"))
    if pattern is None:
        return any(ch.isalpha() for ch in text)
    return bool(pattern.search(text))


def latin_tokens(text: str) -> set[str]:
    """Lower-cased Latin-script tokens of 3+ letters: what survives translation untouched.

    The placeholder mask is not a token of the message and is ignored.
    """
    return {t.lower() for t in _LATIN_TOKEN.findall(text.replace(PLACEHOLDER_MASK, " "))}


def mask_shared_tokens(text: str, vocab: frozenset[str] | set[str]) -> str:
    """Replace every Latin token found in ``vocab`` by ``OVERLAP_MASK`` (the placeholder mask
    stays as it is)."""

    def mask(part: str) -> str:
        return _LATIN_TOKEN.sub(
            lambda m: OVERLAP_MASK if m.group(0).lower() in vocab else m.group(0), part
        )

    return PLACEHOLDER_MASK.join(mask(p) for p in text.split(PLACEHOLDER_MASK))


def _rank(seed: int, *parts: str) -> str:
    """A seeded, order-free sort key: adding or removing items never reshuffles the others."""
    return hashlib.sha1(":".join((str(seed), *parts)).encode()).hexdigest()


# --------------------------------------------------------------------------- building


def _corpus_table(corpus: ParallelCorpus | pa.Table) -> pa.Table:
    table = corpus.table if isinstance(corpus, ParallelCorpus) else corpus
    need = {"key", "lang", "domain", "msgid", "msgstr", "untranslated", "junk", "n_domains"}
    missing = need - set(table.column_names)
    if missing:
        raise TaskError(f"corpus table lacks column(s) {', '.join(sorted(missing))}")
    return table


def _translation_problem(
    lang: str, src_text: str, tgt_text: str, row: Mapping[str, Any], max_chars: int
) -> str:
    if row["untranslated"] or normalise_for_match(tgt_text) == normalise_for_match(src_text):
        return "untranslated"
    if row.get("placeholder_mismatch"):
        return "placeholder_mismatch"
    if not has_script(tgt_text, lang):
        return "wrong_script"
    if not tgt_text or len(tgt_text) > max_chars * 2:
        return "length"
    return ""


def build_tasks(corpus: ParallelCorpus | pa.Table, config: TaskConfig | None = None) -> TaskSet:
    """Build both tasks from a parallel corpus (see the module docstring for the protocol)."""
    config = config or TaskConfig()
    config.validate()
    table = _corpus_table(corpus)
    domains, langs = list(config.domains), list(config.languages)
    present_d = set(pc.unique(table.column("domain")).to_pylist())
    present_l = set(pc.unique(table.column("lang")).to_pylist())
    if missing := sorted(set(domains) - present_d):
        raise TaskError(
            f"domain(s) {', '.join(missing)} not in the corpus; "
            f"it holds {', '.join(sorted(present_d))}"
        )
    if missing := sorted(set(langs) - present_l):
        raise TaskError(
            f"language(s) {', '.join(missing)} not in the corpus; "
            f"it holds {', '.join(sorted(present_l))}"
        )
    mask = pc.and_(
        pc.is_in(table.column("domain"), pa.array(domains)),
        pc.is_in(table.column("lang"), pa.array(langs)),
    )
    rows = table.filter(mask).to_pylist()
    pm = config.placeholder_mode

    # source messages: one per (domain, key)
    sources: dict[tuple[str, str], dict[str, Any]] = {}
    trans: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        dk = (r["domain"], r["key"])
        if dk not in sources:
            sources[dk] = {
                "domain": r["domain"],
                "key": r["key"],
                "msgid": r["msgid"],
                "text": task_text(r["msgid"], bool(r.get("mnemonics")), pm),
                "mt_text": task_text(r["msgid"], bool(r.get("mnemonics")), "keep"),
                "junk": r["junk"],
                "n_domains": r["n_domains"],
            }
        trans[dk].setdefault(r["lang"], r)  # first catalogue of the domain wins
    if not sources:
        raise TaskError("no messages for the requested domains and languages")
    src_keys = sorted(sources)

    def source_problem(s: dict[str, Any]) -> str:
        if s["junk"]:
            return f"junk_{s['junk']}"
        if s["n_domains"] > 1:
            return "shared_across_domains"
        if len(s["text"]) > config.max_chars:
            return "too_long"
        return ""

    # per-language cleaned translations and their problems
    tgt: dict[tuple[str, str], dict[str, tuple[str, str, str]]] = defaultdict(dict)
    for dk in src_keys:
        s = sources[dk]
        for lang, r in trans[dk].items():
            text = task_text(r["msgstr"], bool(r.get("mnemonics")), pm)
            mt = task_text(r["msgstr"], bool(r.get("mnemonics")), "keep")
            prob = _translation_problem(lang, s["text"], text, r, config.max_chars)
            tgt[dk][lang] = (text, mt, prob)

    eligible = {
        dk
        for dk in src_keys
        if not source_problem(sources[dk])
        and all(lang in tgt[dk] and not tgt[dk][lang][2] for lang in langs)
    }

    # near-duplicate groups over every source message of the chosen domains
    texts = [sources[dk]["text"] for dk in src_keys]
    pairs = near_duplicate_pairs(
        texts,
        config.near_dup_threshold,
        config.near_dup_ngram,
        config.num_perm,
        config.bands,
        config.rows,
        config.seed + 1,
    )
    parent = list(range(len(src_keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(src_keys)):
        members[find(i)].append(i)
    group_id = {}
    for idx in members.values():
        gid = min(src_keys[i][1] for i in idx)
        for i in idx:
            group_id[src_keys[i]] = gid

    # assign whole groups to splits, eval first (seeded order), until every domain is full
    quota = {"test": config.test_per_cell, "dev": config.dev_per_cell}
    filled = {s: Counter() for s in quota}
    split_of: dict[tuple[str, str], str] = {}
    eval_item: dict[tuple[str, str], str] = {}
    order = sorted(members.values(), key=lambda idx: _rank(config.seed, group_id[src_keys[idx[0]]]))
    for idx in order:
        cands = sorted(
            (src_keys[i] for i in idx if src_keys[i] in eligible),
            key=lambda dk: _rank(config.seed, "item", dk[1]),
        )
        split = "train"
        if cands:
            d = cands[0][0]
            for s in ("test", "dev"):
                if filled[s][d] < quota[s]:
                    split = s
                    filled[s][d] += 1
                    eval_item[cands[0]] = s
                    break
        for i in idx:
            split_of[src_keys[i]] = split

    # balance: every (language, domain) cell the same size
    per_cell = {s: min(filled[s][d] for d in domains) for s in quota}
    shortfall = {s: {d: filled[s][d] for d in domains if filled[s][d] < quota[s]} for s in quota}
    kept_eval: dict[tuple[str, str], str] = {}
    for s in quota:
        for d in domains:
            items = sorted(
                (dk for dk, sp in eval_item.items() if sp == s and dk[0] == d),
                key=lambda dk: _rank(config.seed, "item", dk[1]),
            )
            for dk in items[: per_cell[s]]:
                kept_eval[dk] = s

    # English training vocabulary: every Latin token of every train-split source message
    vocab = frozenset(
        t for dk in src_keys if split_of[dk] == "train" for t in latin_tokens(sources[dk]["text"])
    )

    # evaluation records (parallel across languages) and translation dev/devtest
    cls_rows: list[dict[str, Any]] = []
    mt_rows: list[dict[str, Any]] = []
    for dk in sorted(kept_eval, key=lambda dk: (dk[0], dk[1])):
        d, key = dk
        split = kept_eval[dk]
        s = sources[dk]
        for lang in [SOURCE_LANG, *langs]:
            text = s["text"] if lang == SOURCE_LANG else tgt[dk][lang][0]
            toks = latin_tokens(text)
            cls_rows.append(
                {
                    "id": make_doc_id(f"gettext:{d}:{lang}", key),
                    "lang": lang,
                    "text": text,
                    "label": d,
                    "split": split,
                    "overlap_controlled": not (toks & vocab),
                    "text_masked": mask_shared_tokens(text, vocab),
                    "key": key,
                    "group": group_id[dk],
                }
            )
        mt_split = "devtest" if split == "test" else "dev"
        for lang in langs:
            mt_rows.extend(_pairs(s["mt_text"], tgt[dk][lang][1], lang, d, key, mt_split))

    # the raw training side: every train-split message, problems included, sampled per cell
    pool_rows: list[dict[str, Any]] = []
    for dk in src_keys:
        if split_of[dk] != "train":
            continue
        d, key = dk
        s = sources[dk]
        pool_rows.append(
            {
                "doc_id": make_doc_id(f"gettext:{d}:{SOURCE_LANG}", key),
                "lang": SOURCE_LANG,
                "domain": d,
                "key": key,
                "text": s["text"],
                "flag": source_problem(s),
            }
        )
        for lang, (text, _mt, prob) in tgt[dk].items():
            pool_rows.append(
                {
                    "doc_id": make_doc_id(f"gettext:{d}:{lang}", key),
                    "lang": lang,
                    "domain": d,
                    "key": key,
                    "text": text,
                    "flag": source_problem(s) or prob,
                }
            )
    pool_rows = _cap_cells(pool_rows, config.raw_train_per_cell, config.seed, "pool")
    pool = pa.Table.from_pylist(pool_rows, schema=POOL_SCHEMA)

    # the builder-filtered training variant: clean rows, decontaminated, balanced
    eval_ids = [r["id"] for r in cls_rows]
    eval_texts = [r["text"] for r in cls_rows]
    clean = [r for r in pool_rows if not r["flag"]]
    docs = classification_documents_from_rows(clean)
    dec = decontaminate(docs, eval_texts, config.decontaminate, eval_ids)
    kept_ids = set(dec.kept.column("doc_id").to_pylist())
    clean = [r for r in clean if r["doc_id"] in kept_ids]
    train_rows = _balanced_train(
        clean, config.domains, config.train_per_cell, config.seed, group_id
    )
    builder_ledger = _builder_ledger(pool_rows)
    ledger = pa.concat_tables([builder_ledger, dec.rejected])

    # translation train pairs from the same clean training messages
    mt_train: list[dict[str, Any]] = []
    by_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in clean:
        if r["lang"] != SOURCE_LANG:
            by_lang[r["lang"]].append(r)
    for lang in langs:
        chosen = sorted(by_lang[lang], key=lambda r: _rank(config.seed, "mt", r["key"]))
        for r in chosen[: config.translation_train_per_lang]:
            dk = (r["domain"], r["key"])
            mt_train.extend(
                _pairs(
                    sources[dk]["mt_text"], tgt[dk][lang][1], lang, r["domain"], r["key"], "train"
                )
            )

    classification = pa.Table.from_pylist(train_rows + cls_rows, schema=CLASSIFICATION_SCHEMA)
    translation = pa.Table.from_pylist(mt_train + mt_rows, schema=TRANSLATION_SCHEMA)
    splits = pa.table(
        {
            "key": [dk[1] for dk in src_keys],
            "domain": [dk[0] for dk in src_keys],
            "group": [group_id[dk] for dk in src_keys],
            "text": [sources[dk]["text"] for dk in src_keys],
            "split": [split_of[dk] for dk in src_keys],
            "eval_item": [dk in kept_eval for dk in src_keys],
        }
    )
    task = TaskSet(classification, translation, pool, splits, ledger, config, english_vocab=vocab)
    task.stats = _stats(task, sources, eligible, pairs, members, per_cell, shortfall, dec)
    return task


def _pairs(src: str, tgt: str, lang: str, domain: str, key: str, split: str) -> list[dict]:
    ph = find_placeholders(src)
    return [
        {
            "id": make_doc_id(f"gettext-mt:{SOURCE_LANG}-{lang}", key),
            "src_lang": SOURCE_LANG,
            "tgt_lang": lang,
            "source": src,
            "target": tgt,
            "split": split,
            "domain": domain,
            "key": key,
            "placeholders": ph,
        },
        {
            "id": make_doc_id(f"gettext-mt:{lang}-{SOURCE_LANG}", key),
            "src_lang": lang,
            "tgt_lang": SOURCE_LANG,
            "source": tgt,
            "target": src,
            "split": split,
            "domain": domain,
            "key": key,
            "placeholders": ph,
        },
    ]


def _cap_cells(rows: list[dict], cap: int, seed: int, salt: str) -> list[dict]:
    """At most ``cap`` rows per (lang, domain), a seeded uniform sample (problems included)."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        cells[(r["lang"], r["domain"])].append(r)
    out = []
    for cell in sorted(cells):
        items = sorted(cells[cell], key=lambda r: _rank(seed, salt, r["doc_id"]))
        out.extend(sorted(items[:cap], key=lambda r: r["doc_id"]))
    return out


def _balanced_train(
    rows: list[dict],
    domains: Sequence[str],
    cap: int | None,
    seed: int,
    group_id: Mapping[tuple[str, str], str] | None = None,
) -> list[dict]:
    """Training records with every (language, domain) cell capped at the same size: the
    smallest cell of the languages present, at most ``cap`` (``None``: no cap, no balancing),
    so no label or language is favoured by sheer count. A row's group comes from the row
    (``group``) or from ``group_id``; its ``weight`` (if any) is carried over."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        cells[(r["lang"], r["domain"])].append(r)
    langs = sorted({lang for lang, _ in cells})
    if cap is not None:
        empty = [f"{lang}/{d}" for lang in langs for d in domains if not cells[(lang, d)]]
        if empty:
            raise TaskError(
                f"no training messages left in cell(s) {', '.join(empty)}; balanced classes "
                "are impossible (lower the filtering or drop the language)"
            )
        size = min([cap] + [len(cells[(lang, d)]) for lang in langs for d in domains])
    out = []
    for cell in sorted(cells):
        items = sorted(cells[cell], key=lambda r: _rank(seed, "train", r["key"]))
        if cap is not None:
            items = items[:size]
        for r in items:
            out.append(
                {
                    "id": r["doc_id"],
                    "lang": r["lang"],
                    "text": r["text"],
                    "label": r["domain"],
                    "split": "train",
                    "overlap_controlled": None,
                    "text_masked": None,
                    "key": r["key"],
                    "group": r["group"] if "group" in r else group_id[(r["domain"], r["key"])],
                    **({"weight": r["weight"]} if "weight" in r else {}),
                }
            )
    return out


def _builder_ledger(pool_rows: list[dict]) -> pa.Table:
    from quality_models.contract import rejected_rows

    flagged = [r for r in pool_rows if r["flag"]]
    docs = classification_documents_from_rows(flagged)
    return rejected_rows(
        docs, "gettext_builder", [r["flag"] for r in flagged], [{"key": r["key"]} for r in flagged]
    )


def _stats(
    task: TaskSet,
    sources: Mapping,
    eligible: set,
    pairs: list,
    members: Mapping,
    per_cell: Mapping[str, int],
    shortfall: Mapping,
    dec: StageResult,
) -> dict[str, Any]:
    cls = task.classification.to_pylist()
    counts: dict[str, Counter] = defaultdict(Counter)
    labels: dict[str, Counter] = defaultdict(Counter)
    oc: dict[str, Counter] = defaultdict(Counter)
    for r in cls:
        counts[r["lang"]][r["split"]] += 1
        labels[r["split"]][r["label"]] += 1
        if r["split"] != "train":
            oc[r["lang"]][r["split"]] += bool(r["overlap_controlled"])
    mt_counts: dict[str, Counter] = defaultdict(Counter)
    for src, tgt_lang, split in zip(
        task.translation.column("src_lang").to_pylist(),
        task.translation.column("tgt_lang").to_pylist(),
        task.translation.column("split").to_pylist(),
        strict=True,
    ):
        mt_counts[f"{src}-{tgt_lang}"][split] += 1
    pool_flags: dict[str, Counter] = defaultdict(Counter)
    for lang, flag in zip(
        task.pool.column("lang").to_pylist(), task.pool.column("flag").to_pylist(), strict=True
    ):
        pool_flags[lang][flag or "clean"] += 1
    sizes = Counter(len(v) for v in members.values())
    return {
        "domains": list(task.config.domains),
        "languages": [SOURCE_LANG, *task.config.languages],
        "source_messages": len(sources),
        "eligible_parallel_messages": len(eligible),
        "near_duplicate_pairs": len(pairs),
        "groups": len(members),
        "groups_with_several_messages": sum(v for k, v in sizes.items() if k > 1),
        "largest_group": max(sizes) if sizes else 0,
        "eval_per_cell": dict(per_cell),
        "eval_shortfall": {k: v for k, v in shortfall.items() if v},
        "counts": {k: dict(v) for k, v in sorted(counts.items())},
        "labels": {k: dict(sorted(v.items())) for k, v in labels.items()},
        "overlap_controlled": {k: dict(v) for k, v in sorted(oc.items())},
        "translation_counts": {k: dict(v) for k, v in sorted(mt_counts.items())},
        "pool_flags": {k: dict(sorted(v.items())) for k, v in sorted(pool_flags.items())},
        "decontamination": {k: v for k, v in dec.metadata.items() if k not in ("reasons",)},
    }


# --------------------------------------------------------------------------- governance side


def classification_documents_from_rows(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Contract documents (``DOCUMENT_SCHEMA``) for pool rows; the label lives in ``source``."""
    return documents_from_records(
        {
            "doc_id": r["doc_id"],
            "source": f"gettext:{r['domain']}:{r['lang']}",
            "text": r["text"],
            "declared_lang": r["lang"],
        }
        for r in rows
    )


TRAIN_SCHEMA = pa.schema([*CLASSIFICATION_SCHEMA, ("weight", pa.float32())])
# what the training pool carries through the governance stages, besides text and language
POOL_COLUMNS = ("label", "key", "group", "split", "flag", "pool_id")


def pool_source_table(task: TaskSet) -> pa.Table:
    """The raw training side as a governance *source* (Parquet that ``raw_documents`` ingests):
    ``text`` and ``lang`` (the catalogue's language, the declared language) plus the columns the
    stages do not use and carry through untouched: ``label`` (the domain), ``key`` (the source
    message), ``group`` (its near-duplicate group), ``split``, ``flag`` (the builder's first
    problem, for reporting what each governance variant removed) and ``pool_id``.

    Nothing is filtered: untranslated entries, messages shared by several programs, junk and
    placeholder-only entries are all here, as they are in the catalogues, so each governance
    variant removes its own share and yields its own training set."""
    group_of = {
        (d, k): g
        for d, k, g in zip(
            *(task.splits.column(c).to_pylist() for c in ("domain", "key", "group")),
            strict=True,
        )
    }
    rows = task.pool.to_pylist()
    return pa.table(
        {
            "text": [r["text"] for r in rows],
            "lang": [r["lang"] for r in rows],
            "label": [r["domain"] for r in rows],
            "key": [r["key"] for r in rows],
            "group": [group_of[(r["domain"], r["key"])] for r in rows],
            "split": ["train"] * len(rows),
            "flag": [r["flag"] for r in rows],
            "pool_id": [r["doc_id"] for r in rows],
        }
    )


def eval_texts_of(classification: pa.Table, translation: pa.Table) -> tuple[list[str], list[str]]:
    """Ids and texts of every evaluation item (classification dev/test, translation dev/devtest
    sources and targets), for ``decontaminate``."""
    ids, texts = [], []
    cls = classification.filter(pc.not_equal(classification.column("split"), "train"))
    ids += cls.column("id").to_pylist()
    texts += cls.column("text").to_pylist()
    mt = translation.filter(pc.not_equal(translation.column("split"), "train"))
    for col in ("source", "target"):
        ids += [f"{i}:{col}" for i in mt.column("id").to_pylist()]
        texts += mt.column(col).to_pylist()
    return ids, texts


def eval_texts(task: TaskSet) -> tuple[list[str], list[str]]:
    """:func:`eval_texts_of` for a built task."""
    return eval_texts_of(task.classification, task.translation)


@dataclass
class GovernedTraining:
    """What :func:`training_records_from_curated` made: the training records, the
    decontamination result, and how many curated rows balancing left out."""

    records: pa.Table  # TRAIN_SCHEMA
    decontamination: StageResult
    curated_rows: int
    balanced_out: int


def training_records_from_curated(
    curated: pa.Table,
    evaluation: tuple[Sequence[str], Sequence[str]],
    config: TaskConfig,
    weight_of: Callable[[int], float] | None = None,
    balance: bool = True,
) -> GovernedTraining:
    """Classification ``train`` records from exactly the rows a governance variant curated.

    ``curated`` holds the variant's curated rows of the task pool (with the pool's pass-through
    columns ``label``, ``key``, ``group``). They are decontaminated against every evaluation
    item (``evaluation`` = ids and texts), and, with ``balance``, capped so that every
    (language, label) cell has the same size. ``weight_of`` maps a row's duplicate-cluster size
    to its sampling weight (the ``rehydrate`` arm); without it every weight is 1. The language
    is the one governance assigned (the curated partition)."""
    missing = [c for c in ("doc_id", "text", "lang", "label", "key", "group")
               if c not in curated.column_names]  # fmt: skip
    if missing:
        raise TaskError(f"curated rows lack the task pool's column(s) {', '.join(missing)}")
    if not curated.num_rows:
        raise TaskError("the governance variant kept no training documents")
    ids, texts = evaluation
    dec = decontaminate(curated, list(texts), config.decontaminate, list(ids))
    kept = dec.kept
    sizes = (
        kept.column("dup_cluster_size").to_pylist()
        if "dup_cluster_size" in kept.column_names
        else [None] * kept.num_rows
    )
    rows = [
        {"doc_id": d, "lang": lang, "domain": label, "key": key, "text": text, "group": group,
         "weight": float(weight_of(int(size or 1))) if weight_of else 1.0}
        for d, lang, label, key, text, group, size in zip(
            *(kept.column(c).to_pylist() for c in ("doc_id", "lang", "label", "key", "text",
                                                   "group")),
            sizes, strict=True,
        )
    ]  # fmt: skip
    cap = config.train_per_cell if balance else None
    records = _balanced_train(rows, config.domains, cap, config.seed)
    table = pa.Table.from_pylist(records, schema=TRAIN_SCHEMA)
    return GovernedTraining(table, dec, curated.num_rows, len(rows) - table.num_rows)


def flag_report(flags: Mapping[str, str], rejected: pa.Table) -> dict[str, dict[str, int]]:
    """How many pool documents of each builder flag a governance variant removed, per stage.

    ``flags`` maps the pool documents' ``doc_id`` to their builder flag ("" = clean) and
    ``rejected`` is the variant's ledger; the answer reads e.g. ``{"language_id":
    {"untranslated": 812, ...}, "deduplicated": {"shared_across_domains": ...}}``."""
    out: dict[str, Counter] = defaultdict(Counter)
    for doc_id, stage in zip(
        rejected.column("doc_id").to_pylist(), rejected.column("stage").to_pylist(), strict=True
    ):
        if doc_id in flags:
            out[stage][flags[doc_id] or "clean"] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def asset_metadata(task: TaskSet, lang: str | None = None) -> dict[str, Any]:
    """Counts for an asset's metadata, for one language partition or (``None``) the whole task:
    items per split, label distribution, overlap-controlled items, translation pairs, what the
    builder flagged and what decontamination removed."""
    cls = task.classification
    mt = task.translation
    ledger = task.ledger
    pool = task.pool
    if lang is not None:
        if lang not in task.stats["languages"]:
            raise TaskError(f"language {lang!r} is not in this task ({task.stats['languages']})")
        cls = cls.filter(pc.equal(cls.column("lang"), lang))
        mt = mt.filter(
            pc.or_(pc.equal(mt.column("src_lang"), lang), pc.equal(mt.column("tgt_lang"), lang))
        )
        ledger = ledger.filter(pc.equal(ledger.column("lang"), lang))
        pool = pool.filter(pc.equal(pool.column("lang"), lang))
    rows = cls.select(["split", "label", "overlap_controlled"]).to_pylist()
    labels: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        labels[r["split"]][r["label"]] += 1
    stages = Counter(
        zip(ledger.column("stage").to_pylist(), ledger.column("reason").to_pylist(), strict=True)
    )
    return {
        "classification_items": {k: sum(v.values()) for k, v in sorted(labels.items())},
        "label_distribution": {k: dict(sorted(v.items())) for k, v in sorted(labels.items())},
        "overlap_controlled_test": sum(
            1 for r in rows if r["split"] == "test" and r["overlap_controlled"]
        ),
        "translation_pairs": dict(sorted(Counter(mt.column("split").to_pylist()).items())),
        "train_pool": pool.num_rows,
        "builder_flags": dict(
            sorted(Counter(f or "clean" for f in pool.column("flag").to_pylist()).items())
        ),
        "contamination_removed": stages.get(("decontaminate", "eval_contamination"), 0),
    }


def zero_shot_train(classification: pa.Table) -> pa.Table:
    """The zero-shot protocol's training rows: English only."""
    m = pc.and_(
        pc.equal(classification.column("split"), "train"),
        pc.equal(classification.column("lang"), SOURCE_LANG),
    )
    return classification.filter(m)


def translate_train(classification: pa.Table) -> pa.Table:
    """The translate-train protocol's training rows: English plus every translation."""
    return classification.filter(pc.equal(classification.column("split"), "train"))


# --------------------------------------------------------------------------- verbalisers


@dataclass(frozen=True)
class Verbaliser:
    domain: str
    word: str
    text: str  # what is tokenised: the word with its leading space
    token_id: int


def single_token_verbalisers(
    tokenizer: Any,
    domains: Sequence[str],
    candidates: Mapping[str, Sequence[str]] | None = None,
    prefix: str = " ",
) -> dict[str, Verbaliser]:
    """One label word per domain that is a single token (with its leading space) in this
    tokenizer's vocabulary, distinct across domains; the first candidate that qualifies wins.

    Scoring one label token per class is only fair when every label is one token: " gpg" and
    " coreutils" are two tokens in Gemma's vocabulary, so their first piece would be scored.
    """
    candidates = candidates or CANDIDATE_VERBALISERS
    out: dict[str, Verbaliser] = {}
    used: set[int] = set()
    for d in domains:
        tried = []
        words = list(candidates.get(d, ())) or [d]
        for word in words:
            text = f"{prefix}{word}"
            ids = tokenizer.encode(text, add_special_tokens=False)
            tried.append(f"{text!r}->{len(ids)} tokens")
            if len(ids) == 1 and ids[0] not in used:
                out[d] = Verbaliser(d, word, text, int(ids[0]))
                used.add(int(ids[0]))
                break
        else:
            raise TaskError(
                f"no single-token verbaliser for domain {d!r} in this tokenizer: "
                f"{', '.join(tried)}; pass candidates= with other words"
            )
    return out


# --------------------------------------------------------------------------- baseline


class LexicalBaseline:
    """Character n-gram naive Bayes trained on the English training messages.

    It measures how much of a cross-lingual score untranslated identifiers alone explain, so it
    belongs beside every model result (on all items, on the overlap-controlled subset and on
    the masked texts).
    """

    def __init__(self, ngram_range: tuple[int, int] = (2, 4), alpha: float = 0.1):
        self.model = make_pipeline(
            CountVectorizer(analyzer="char_wb", ngram_range=ngram_range, lowercase=True),
            MultinomialNB(alpha=alpha),
        )

    def fit(self, train: pa.Table, languages: Sequence[str] = (SOURCE_LANG,)) -> LexicalBaseline:
        m = pc.and_(
            pc.equal(train.column("split"), "train"),
            pc.is_in(train.column("lang"), pa.array(list(languages))),
        )
        rows = train.filter(m)
        if rows.num_rows == 0:
            raise TaskError(f"no training rows in language(s) {list(languages)}")
        if len(set(rows.column("label").to_pylist())) < 2:
            raise TaskError("the baseline needs training rows of at least two labels")
        self.model.fit(rows.column("text").to_pylist(), rows.column("label").to_pylist())
        return self

    def predict(self, texts: Sequence[str]) -> list[str]:
        return list(self.model.predict(list(texts))) if len(texts) else []

    def report(self, table: pa.Table, split: str = "test") -> pa.Table:
        """Accuracy per language with 95% Wilson intervals: all items, overlap-controlled items,
        and all items with the shared tokens masked."""
        ev = table.filter(pc.equal(table.column("split"), split))
        out = []
        for lang in _ordered_langs(ev.column("lang").to_pylist()):
            rows = ev.filter(pc.equal(ev.column("lang"), lang)).to_pylist()
            gold = [r["label"] for r in rows]
            pred = self.predict([r["text"] for r in rows])
            ok = [p == g for p, g in zip(pred, gold, strict=True)]
            oc = [o for o, r in zip(ok, rows, strict=True) if r["overlap_controlled"]]
            masked = self.predict([r["text_masked"] or r["text"] for r in rows])
            ok_m = [p == g for p, g in zip(masked, gold, strict=True)]
            acc, lo, hi = _accuracy(ok)
            acc_oc, lo_oc, hi_oc = _accuracy(oc)
            oc_rows = [
                (g, p) for g, p, r in zip(gold, pred, rows, strict=True) if r["overlap_controlled"]
            ]
            oc_labels = Counter(g for g, _ in oc_rows)
            out.append(
                {
                    "lang": lang,
                    "n": len(ok),
                    "accuracy": acc,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_overlap_controlled": len(oc),
                    "accuracy_overlap_controlled": acc_oc,
                    "oc_ci_low": lo_oc,
                    "oc_ci_high": hi_oc,
                    # the subset is not class-balanced: give its majority share (what always
                    # guessing that class scores) and the balanced accuracy (chance = 1/K)
                    "oc_majority_share": round(max(oc_labels.values()) / len(oc), 4)
                    if oc
                    else None,
                    "balanced_accuracy_overlap_controlled": _balanced_accuracy(oc_rows),
                    "accuracy_masked": _accuracy(ok_m)[0],
                }
            )
        return pa.Table.from_pylist(out)


def _accuracy(ok: Sequence[bool]) -> tuple[float | None, float | None, float | None]:
    if not ok:
        return None, None, None
    k = int(sum(ok))
    ci = binomtest(k, len(ok)).proportion_ci(confidence_level=0.95, method="wilson")
    return round(k / len(ok), 4), round(float(ci.low), 4), round(float(ci.high), 4)


def _balanced_accuracy(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Mean per-class recall over the classes present: chance is 1/K whatever the mix."""
    if not pairs:
        return None
    hits: dict[str, list[bool]] = defaultdict(list)
    for gold, pred in pairs:
        hits[gold].append(gold == pred)
    return round(float(np.mean([np.mean(v) for v in hits.values()])), 4)


def _ordered_langs(langs: Iterable[str]) -> list[str]:
    seen = sorted(set(langs))
    return ([SOURCE_LANG] if SOURCE_LANG in seen else []) + [x for x in seen if x != SOURCE_LANG]


# --------------------------------------------------------------------------- cards and files


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in r) + " |")
    return "\n".join(lines)


def classification_card(
    task: TaskSet,
    baseline: pa.Table | None = None,
    verbalisers: Mapping[str, Verbaliser] | None = None,
    manifest: pa.Table | None = None,
) -> str:
    """A Markdown dataset card: protocol, counts per language and split, labels, verbalisers,
    overlap control, the lexical baseline, and what the builder set aside."""
    st = task.stats
    cfg = task.config
    langs = st["languages"]
    parts = [
        "# gettext message-domain classification (XNLI-style protocol)",
        "",
        "Each item is a program message from the operating system's gettext catalogues; the "
        "label is the program. Zero-shot protocol: train on English (`lang == 'en'`, split "
        "`train`), evaluate on the human translations. Translate-train: train on every `train` "
        "row. `dev` is for temperature scaling and early stopping.",
        "",
        f"- domains (labels, K={len(cfg.domains)}): {', '.join(cfg.domains)}; chance = "
        f"{1 / len(cfg.domains):.2f}",
        f"- languages: {', '.join(langs)} (non-Latin scripts: "
        f"{', '.join(x for x in langs if LANGUAGE_SCRIPTS.get(x, 'Latn') != 'Latn')})",
        f"- splits by source message; near-duplicate msgids (char {cfg.near_dup_ngram}-gram "
        f"Jaccard >= {cfg.near_dup_threshold}) share a split; seed {cfg.seed}",
        f"- evaluation items are parallel: the same {st['eval_per_cell']['test']} test and "
        f"{st['eval_per_cell']['dev']} dev messages per domain in every language",
        f"- placeholders in text: {cfg.placeholder_mode} (mask token `{PLACEHOLDER_MASK}`); "
        "keyboard accelerators removed; messages longer than "
        f"{cfg.max_chars} characters left out",
        "",
        "## Counts per language and split",
        "",
        _md_table(
            ["lang", "script", "train", "dev", "test", "test overlap-controlled"],
            [
                (
                    lang,
                    LANGUAGE_SCRIPTS.get(lang, "?"),
                    st["counts"].get(lang, {}).get("train", 0),
                    st["counts"].get(lang, {}).get("dev", 0),
                    st["counts"].get(lang, {}).get("test", 0),
                    st["overlap_controlled"].get(lang, {}).get("test", 0),
                )
                for lang in langs
            ],
        ),
        "",
        "## Label distribution (all languages)",
        "",
        _md_table(
            ["label", "train", "dev", "test"],
            [
                (d, *(st["labels"].get(s, {}).get(d, 0) for s in ("train", "dev", "test")))
                for d in cfg.domains
            ],
        ),
    ]
    if st.get("eval_shortfall"):
        parts += [
            "",
            "**Shortfall.** Some domains hold fewer clean parallel messages than asked for, so "
            f"every cell was capped at the smallest: {st['eval_shortfall']}.",
        ]
    if verbalisers:
        parts += [
            "",
            "## Verbalisers (one token each, with the leading space)",
            "",
            _md_table(
                ["domain", "word", "token id"],
                [(d, f"`{v.text}`", v.token_id) for d, v in verbalisers.items()],
            ),
        ]
    parts += [
        "",
        "## Lexical overlap",
        "",
        "`overlap_controlled` is true when an item shares no Latin-script token of 3+ "
        "characters with any English training message; `text_masked` replaces the shared "
        f"tokens by `{OVERLAP_MASK}`. Report model scores on both beside the full test set. "
        "The overlap-controlled subset is not class-balanced (short GUI and package messages "
        "are more often free of shared tokens), so compare accuracy on it with its majority "
        "share, or use the balanced accuracy (chance 1/K).",
    ]
    if baseline is not None:
        parts += [
            "",
            "Lexical-overlap baseline (character 2-4-gram naive Bayes on English train), test "
            "split, accuracy with 95% Wilson interval:",
            "",
            _md_table(
                ["lang", "n", "accuracy", "95% CI", "n overlap-ctrl", "acc. overlap-ctrl",
                 "majority share overlap-ctrl", "balanced acc. overlap-ctrl", "acc. masked"],
                [
                    (
                        r["lang"], r["n"], r["accuracy"], f"{r['ci_low']}-{r['ci_high']}",
                        r["n_overlap_controlled"], r["accuracy_overlap_controlled"],
                        r["oc_majority_share"], r["balanced_accuracy_overlap_controlled"],
                        r["accuracy_masked"],
                    )
                    for r in baseline.to_pylist()
                ],
            ),
        ]  # fmt: skip
    flags = st["pool_flags"]
    all_flags = sorted({f for v in flags.values() for f in v})
    parts += [
        "",
        "## Training side before governance",
        "",
        f"The raw training pool (train-split messages, at most {cfg.raw_train_per_cell} per "
        "language and domain, problems included) goes through the governance pipeline; the "
        "builder's own rules flag:",
        "",
        _md_table(
            ["lang", *all_flags],
            [(lang, *(flags[lang].get(f, 0) for f in all_flags)) for lang in flags],
        ),
        "",
        f"Decontamination of the builder-filtered train split against every evaluation item: "
        f"{st['decontamination'].get('rejected', 0)} removed "
        f"({st['decontamination'].get('exact_matches', 0)} exact, "
        f"{st['decontamination'].get('near_matches', 0)} near).",
    ]
    if manifest is not None:
        ok = manifest.filter(pc.equal(manifest.column("status"), "ok"))
        parts += [
            "",
            "## Lineage",
            "",
            f"{manifest.num_rows} catalogues read ({manifest.num_rows - ok.num_rows} "
            "unreadable); paths and SHA-256 checksums are in `manifest.parquet`.",
        ]
    return "\n".join(parts) + "\n"


def translation_card(task: TaskSet) -> str:
    st = task.stats
    rows = []
    for pair, c in st["translation_counts"].items():
        rows.append((pair, c.get("train", 0), c.get("dev", 0), c.get("devtest", 0)))
    return (
        "\n".join(
            [
                "# gettext message translation (FLORES-style protocol)",
                "",
                "Human translations of program messages, en->xx and xx->en. `dev` and `devtest` "
                "are multi-way parallel (the same English messages in every language) and are "
                "the classification task's dev and test messages; `train` pairs come from "
                "training-split messages only. Placeholders are kept in the text (a translation "
                "must preserve them) and listed per pair.",
                "",
                _md_table(["pair", "train", "dev", "devtest"], rows),
            ]
        )
        + "\n"
    )


def write_tasks(
    task: TaskSet,
    out_dir: str | Path,
    baseline: pa.Table | None = None,
    verbalisers: Mapping[str, Verbaliser] | None = None,
    manifest: pa.Table | None = None,
) -> dict[str, Path]:
    """Parquet files (``datasets.load_dataset("parquet")`` reads them) and the two cards."""
    out = Path(out_dir)
    paths = {
        "classification": write_parquet_atomic(task.classification, out / "classification.parquet"),
        "translation": write_parquet_atomic(task.translation, out / "translation.parquet"),
        "pool": write_parquet_atomic(task.pool, out / "train_pool.parquet"),
        "splits": write_parquet_atomic(task.splits, out / "splits.parquet"),
        "ledger": write_parquet_atomic(task.ledger, out / "rejected.parquet"),
        "classification_card": write_text_atomic(
            classification_card(task, baseline, verbalisers, manifest),
            out / "classification_card.md",
        ),
        "translation_card": write_text_atomic(translation_card(task), out / "translation_card.md"),
    }
    if manifest is not None:
        paths["manifest"] = write_parquet_atomic(manifest, out / "manifest.parquet")
    return paths


# --------------------------------------------------------------------------- end to end


def build_gettext_tasks(
    out_dir: str | Path | None = None,
    locale_dir: str | Path | None = None,
    config: TaskConfig | None = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> tuple[TaskSet, ParallelCorpus, dict[str, Path]]:
    """Catalogues -> parallel corpus -> tasks -> lexical baseline (-> verbalisers) -> files.

    Every program's catalogues are read (iso-codes, which are names of countries and languages
    rather than program messages, excepted), so a message shared with any other program counts
    as a duplicate across packages even when that program is not a task domain.
    """
    config = config or TaskConfig()
    corpus = build_parallel_corpus(
        locale_dir,
        languages=list(config.languages),
        progress=progress,
        exclude_domains=("iso-codes",),
    )
    task = build_tasks(corpus, config)
    baseline = LexicalBaseline().fit(task.classification).report(task.classification)
    task.stats["lexical_baseline"] = baseline.to_pylist()
    verbalisers = None
    if tokenizer is not None:
        verbalisers = single_token_verbalisers(tokenizer, config.domains)
        task.stats["verbalisers"] = {d: v.text for d, v in verbalisers.items()}
    paths: dict[str, Path] = {}
    if out_dir is not None:
        paths = write_tasks(task, out_dir, baseline, verbalisers, corpus.manifest)
        paths["parallel_corpus"] = write_parquet_atomic(
            corpus.table, Path(out_dir) / "parallel_corpus.parquet"
        )
    return task, corpus, paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.tasks --out DIR``: build both tasks and their cards."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--locale-dir", default=None, help="default: /usr/share/locale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", default=",".join(DEFAULT_DOMAINS))
    parser.add_argument("--languages", default=",".join(DEFAULT_LANGUAGES))
    parser.add_argument(
        "--tokenizer", default=None, help="a Hugging Face tokenizer folder: record verbalisers"
    )
    args = parser.parse_args(argv)
    config = TaskConfig(
        domains=tuple(args.domains.split(",")),
        languages=tuple(args.languages.split(",")),
        seed=args.seed,
    )
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    task, _corpus, paths = build_gettext_tasks(args.out, args.locale_dir, config, tokenizer)
    summary = {k: task.stats[k] for k in ("counts", "eval_per_cell", "decontamination")}
    print(json.dumps(summary, indent=1, default=str))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
