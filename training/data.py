"""Task records → tokenised batches that keep each example's language.

Two tasks (docs/method.md §5):

* **classification**: a prompt, then one label token per class (the verbaliser). The model is
  scored by the softmax over the verbaliser logits at the last prompt position, so calibration
  gets real class probabilities. Prompts are left-padded so that position is always the last one
  and only one row of logits is computed (``logits_to_keep=1``): cheap even with a 262k vocabulary.
* **translation**: supervised fine-tuning on prompt → target with the loss on the target only.

Records follow the task-data contract: classification ``id, lang, text, label, split``;
translation ``id, src_lang, tgt_lang, source, target, split``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CLASSIFICATION_COLUMNS = ("id", "lang", "text", "label", "split")
TRANSLATION_COLUMNS = ("id", "src_lang", "tgt_lang", "source", "target", "split")
TASKS = ("classification", "translation")
SPLITS = ("train", "dev", "test", "devtest")
DEFAULT_CLS_TEMPLATE = "{text}\nTopic:"
DEFAULT_MT_TEMPLATE = "{src_lang}: {source}\n{tgt_lang}:"


# --------------------------------------------------------------------------- records
def read_records(source: str | Path | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Read task records from Parquet, JSONL or JSON (or pass records through)."""
    if not isinstance(source, (str, Path)):
        return [dict(r) for r in source]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"task data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        return data
    raise ValueError(f"{path}: unsupported task data format {suffix!r} (use .parquet or .jsonl)")


def validate_records(records: Sequence[Mapping[str, Any]], task: str) -> None:
    """Fail early, naming the rows, when records do not follow the task-data contract."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if not records:
        raise ValueError(f"no {task} records")
    columns = CLASSIFICATION_COLUMNS if task == "classification" else TRANSLATION_COLUMNS
    text_cols = ("text", "label") if task == "classification" else ("source", "target")
    problems: list[str] = []
    for i, rec in enumerate(records):
        missing = [c for c in columns if c not in rec]
        if missing:
            problems.append(f"row {i} (id={rec.get('id')!r}) lacks {missing}")
        elif any(not isinstance(rec[c], str) or not rec[c].strip() for c in text_cols):
            problems.append(
                f"row {i} (id={rec.get('id')!r}) has an empty or non-string {text_cols}"
            )
        elif rec["split"] not in SPLITS:
            problems.append(f"row {i} (id={rec.get('id')!r}) has split={rec['split']!r}")
        elif "weight" in rec:
            try:
                example_weight(rec)
            except ValueError as exc:
                problems.append(f"row {i}: {exc}")
        if len(problems) >= 5:
            break
    if problems:
        raise ValueError(f"{task} records break the task-data contract: " + "; ".join(problems))


def example_weight(rec: Mapping[str, Any]) -> float:
    """A record's sampling weight: its ``weight`` column, 1 when absent or null."""
    w = rec.get("weight")
    if w is None:
        return 1.0
    if isinstance(w, bool) or not isinstance(w, int | float):
        raise ValueError(f"record {rec.get('id')!r} has a non-numeric weight {w!r}")
    w = float(w)
    if not math.isfinite(w) or w < 0:
        raise ValueError(
            f"record {rec.get('id')!r} has weight {w}; weights must be finite and >= 0"
        )
    return w


def rehydration_weight(cluster_size: int | None) -> float:
    """FineWeb-2's up-weighting of a kept document by the size of its near-duplicate cluster.

    2 -> 2x, 3-4 -> 3x, 5-99 -> 5x, 100-999 -> 8x, >= 1000 -> 1x (such huge clusters are
    mostly boilerplate); a singleton (size 1, or no cluster) keeps weight 1.
    """
    if cluster_size is None:
        return 1.0
    if isinstance(cluster_size, bool) or int(cluster_size) != cluster_size or cluster_size < 0:
        raise ValueError(f"cluster_size must be a non-negative integer, got {cluster_size!r}")
    size = int(cluster_size)
    if size <= 1 or size >= 1000:
        return 1.0
    if size == 2:
        return 2.0
    if size <= 4:
        return 3.0
    if size <= 99:
        return 5.0
    return 8.0


_VERSION_CACHE: dict[tuple[str, int, int], str] = {}


def data_version(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (a directory: of its files' relative names and
    bytes), cached per (path, mtime, size): the content identity that the run fingerprint and
    the asset metadata use, so a moved data root or the same data written elsewhere keeps it
    and different data under the same path does not."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(path)).encode() + b"\0")
            h.update(data_version(f).encode() + b"\0")
        return f"sha256:{h.hexdigest()}"
    st = os.stat(path)
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    cached = _VERSION_CACHE.get(key)
    if cached is None:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        cached = _VERSION_CACHE[key] = f"sha256:{h.hexdigest()}"
    return cached


def split_records(records: Sequence[Mapping[str, Any]], split: str) -> list[dict[str, Any]]:
    return [dict(r) for r in records if r.get("split") == split]


def example_language(rec: Mapping[str, Any], task: str) -> str:
    """The language key an example is reported (and MOO-weighted) under."""
    if task == "classification":
        return str(rec["lang"])
    return f"{rec['src_lang']}-{rec['tgt_lang']}"


# --------------------------------------------------------------------------- verbalisers
@dataclass
class ClassificationTask:
    """Class order, the label word of each class, and its single token id."""

    labels: list[str]
    verbalizers: dict[str, str]
    label_token_ids: list[int]
    template: str = DEFAULT_CLS_TEMPLATE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassificationTask:
        return cls(**dict(data))


def choose_verbalizers(
    labels: Sequence[str],
    tokenizer: Any,
    overrides: Mapping[str, str] | None = None,
    template: str = DEFAULT_CLS_TEMPLATE,
    candidates: Mapping[str, Sequence[str]] | None = None,
) -> ClassificationTask:
    """Pick for each label a word that is one token and distinct from the other labels' tokens.

    Tried in order: ``overrides[label]`` (exactly as given), then " w" for each word in
    ``candidates[label]``, then " label", "label", " Label", "Label". Raises a ValueError naming
    the labels that have no single-token form.
    """
    if "{text}" not in template:
        raise ValueError(f"the classification template must contain {{text}}: {template!r}")
    overrides = dict(overrides or {})
    chosen: dict[str, str] = {}
    ids: list[int] = []
    failures: list[str] = []
    for label in labels:
        if label in overrides:
            tried = [overrides[label]]
        else:
            tried = [f" {w}" for w in (candidates or {}).get(label, ())]
            tried += [f" {label}", label, f" {label.capitalize()}", label.capitalize()]
        for word in tried:
            tok = tokenizer.encode(word, add_special_tokens=False)
            if len(tok) == 1 and tok[0] != tokenizer.unk_token_id and tok[0] not in ids:
                chosen[label] = word
                ids.append(tok[0])
                break
        else:
            shown = {w: tokenizer.tokenize(w) for w in tried}
            failures.append(f"{label!r} -> {shown}")
    if failures:
        raise ValueError(
            "no single-token verbaliser for: "
            + "; ".join(failures)
            + ". Pass verbalizers={label: word} with words that are one token."
        )
    return ClassificationTask(list(labels), chosen, ids, template)


# --------------------------------------------------------------------------- encoding
def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def encode_classification(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    task: ClassificationTask,
    max_length: int = 128,
) -> list[dict[str, Any]]:
    """Prompt ids (text truncated to fit ``max_length``), class index and language per record."""
    prefix, suffix = task.template.split("{text}", 1)
    pre, suf = _bos(tokenizer) + _ids(tokenizer, prefix), _ids(tokenizer, suffix)
    budget = max_length - len(pre) - len(suf)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text after the template")
    index = {label: i for i, label in enumerate(task.labels)}
    out = []
    for rec in records:
        if rec["label"] not in index:
            raise ValueError(
                f"record {rec.get('id')!r} has label {rec['label']!r} not in {task.labels}"
            )
        text_ids = _ids(tokenizer, str(rec["text"]))[:budget]
        out.append(
            {
                "id": str(rec.get("id", "")),
                "lang": example_language(rec, "classification"),
                "input_ids": pre + text_ids + suf,
                "class_id": index[rec["label"]],
                "weight": example_weight(rec),
            }
        )
    return out


def translation_prompt(
    tokenizer: Any, rec: Mapping[str, Any], template: str, max_length: int
) -> list[int]:
    """BOS, the template's prefix, the source cut to fit ``max_length`` tokens, and the suffix,
    each encoded on its own: the prompt a translation model is trained on and queried with."""
    if "{source}" not in template:
        raise ValueError(f"the translation template must contain {{source}}: {template!r}")
    fields_ = {"src_lang": rec["src_lang"], "tgt_lang": rec["tgt_lang"]}
    prefix, suffix = template.split("{source}", 1)
    pre = _bos(tokenizer) + _ids(tokenizer, prefix.format(**fields_))
    suf = _ids(tokenizer, suffix.format(**fields_))
    budget = max_length - len(pre) - len(suf)
    if budget < 1:
        raise ValueError(f"a prompt of at most {max_length} tokens leaves no room for the source")
    return pre + _ids(tokenizer, str(rec["source"]))[:budget] + suf


def encode_translation(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_length: int = 128,
    template: str = DEFAULT_MT_TEMPLATE,
    max_target_length: int | None = None,
) -> list[dict[str, Any]]:
    """Prompt → target ids with labels -100 on the prompt: the loss is on the target only."""
    max_target_length = max_target_length or max_length // 2
    eos = tokenizer.eos_token_id
    out = []
    for rec in records:
        target = _ids(tokenizer, " " + str(rec["target"]).strip())[: max_target_length - 1] + [eos]
        prompt = translation_prompt(tokenizer, rec, template, max_length - len(target))
        out.append(
            {
                "id": str(rec.get("id", "")),
                "lang": example_language(rec, "translation"),
                "input_ids": prompt + target,
                "labels": [-100] * len(prompt) + target,
                "weight": example_weight(rec),
            }
        )
    return out


@dataclass
class Collator:
    """Pads a list of encoded examples into a batch dict (tensors + ``langs``); with
    ``device`` set, the tensors come back on that device."""

    task: str
    pad_id: int
    label_token_ids: list[int] = field(default_factory=list)
    device: str | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        n = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        batch: dict[str, Any] = {"langs": [e["lang"] for e in examples]}
        if self.task == "classification":
            for i, e in enumerate(examples):  # left padding: the label slot is always at -1
                k = len(e["input_ids"])
                ids[i, n - k :] = torch.tensor(e["input_ids"])
                mask[i, n - k :] = 1
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
            batch["class_ids"] = torch.tensor([e["class_id"] for e in examples])
            batch["label_token_ids"] = torch.tensor(self.label_token_ids)
        else:
            labels = torch.full((len(examples), n), -100, dtype=torch.long)
            for i, e in enumerate(examples):
                k = len(e["input_ids"])
                ids[i, :k] = torch.tensor(e["input_ids"])
                mask[i, :k] = 1
                labels[i, :k] = torch.tensor(e["labels"])
            batch["labels"] = labels
        batch["input_ids"], batch["attention_mask"] = ids, mask
        if self.device is not None and torch.device(self.device).type != "cpu":
            from training.device import move_batch

            batch = move_batch(batch, self.device)
        return batch


def count_tokens(batch: Mapping[str, Any]) -> int:
    return int(batch["attention_mask"].sum())


def example_target_count(example: Mapping[str, Any]) -> int:
    """An encoded example's weight in :func:`example_losses`' token-weighted mean, without a
    forward pass: 1 for classification, its number of target tokens for translation."""
    if "class_id" in example:
        return 1
    return sum(1 for label in example["labels"][1:] if label != -100)


# --------------------------------------------------------------------------- losses
def class_logits(model: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    """(B, C) logits of the label tokens at the last prompt position."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=1,
    )
    return out.logits[:, -1, :].float()[:, batch["label_token_ids"]]


def example_losses(
    model: Any, batch: Mapping[str, Any], cls_loss: str = "verbalizer"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean losses (B,) and per-example target-token counts (B,).

    Classification: cross-entropy over the verbaliser tokens (``cls_loss="verbalizer"``, the
    same softmax the scores use) or over the whole vocabulary (``"vocab"``). Translation:
    token-level cross-entropy on the target tokens.
    """
    if "class_ids" in batch:
        if cls_loss == "verbalizer":
            logits = class_logits(model, batch)
            losses = F.cross_entropy(logits, batch["class_ids"], reduction="none")
        elif cls_loss == "vocab":
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
                logits_to_keep=1,
            )
            target = batch["label_token_ids"][batch["class_ids"]]
            losses = F.cross_entropy(out.logits[:, -1, :].float(), target, reduction="none")
        else:
            raise ValueError(f"cls_loss must be 'verbalizer' or 'vocab', got {cls_loss!r}")
        return losses, torch.ones_like(losses)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    tok = F.cross_entropy(
        logits[:, :-1, :].float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(labels.shape)
    counts = (labels != -100).sum(-1)
    return tok.sum(-1) / counts.clamp_min(1), counts.float()


def batch_loss(model: Any, batch: Mapping[str, Any], cls_loss: str = "verbalizer") -> torch.Tensor:
    """Mean loss over the batch's target tokens (classification: over its examples)."""
    losses, counts = example_losses(model, batch, cls_loss)
    return (losses * counts).sum() / counts.sum().clamp_min(1)


def language_losses(
    losses: torch.Tensor, counts: torch.Tensor, langs: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Token-weighted mean loss per language (tensors keep their graph for MOO)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, lang in enumerate(langs):
        groups[lang].append(i)
    out = {}
    for lang in sorted(groups):
        idx = torch.tensor(groups[lang], device=losses.device)
        c = counts[idx]
        out[lang] = (losses[idx] * c).sum() / c.sum().clamp_min(1)
    return out


# --------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_classification(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    task: ClassificationTask,
    batch_size: int = 16,
    max_length: int = 128,
) -> np.ndarray:
    """Class probabilities (N, C): softmax over the verbaliser logits, in ``task.labels`` order."""
    was_training = model.training
    model.eval()
    recs = [dict(r, label=r.get("label") or task.labels[0]) for r in records]
    enc = encode_classification(recs, tokenizer, task, max_length)
    device = next(iter(model.parameters())).device
    collate = Collator(
        "classification", tokenizer.pad_token_id, task.label_token_ids, device=str(device)
    )
    probs = []
    for i in range(0, len(enc), batch_size):
        logits = class_logits(model, collate(enc[i : i + batch_size]))
        probs.append(torch.softmax(logits, -1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(probs) if probs else np.zeros((0, len(task.labels)))


# --------------------------------------------------------------------------- synthetic data
_SYN_LEXICON = {
    "en": {
        "sports": "ball goal team match score coach",
        "music": "song guitar concert melody band album",
        "science": "atom cell energy theory experiment lab",
        "food": "bread soup cheese recipe kitchen salt",
    },
    "de": {
        "sports": "ball tor mannschaft spiel punkte trainer",
        "music": "lied gitarre konzert melodie kapelle platte",
        "science": "atom zelle energie theorie versuch labor",
        "food": "brot suppe käse rezept küche salz",
    },
    "fr": {
        "sports": "ballon but équipe match score entraîneur",
        "music": "chanson guitare concert mélodie groupe disque",
        "science": "atome cellule énergie théorie expérience labo",
        "food": "pain soupe fromage recette cuisine sel",
    },
}
_SYN_FILLER = {
    "en": "the a today very with and this new big",
    "de": "der die heute sehr mit und das neu groß",
    "fr": "le la aujourd'hui très avec et ce nouveau grand",
}


def synthetic_classification_records(
    n_per_class: int = 12, langs: Sequence[str] = ("en", "de", "fr"), seed: int = 0
) -> list[dict[str, Any]]:
    """A small labelled multilingual topic set (4 classes) for tests and smoke runs."""
    rng = random.Random(seed)
    out = []
    for lang in langs:
        if lang not in _SYN_LEXICON:
            raise ValueError(f"synthetic data knows {sorted(_SYN_LEXICON)}, not {lang!r}")
        filler = _SYN_FILLER[lang].split()
        for label, words in _SYN_LEXICON[lang].items():
            kw = words.split()
            for i in range(n_per_class):
                toks = rng.sample(kw, 3) + rng.sample(filler, 4)
                rng.shuffle(toks)
                split = "train" if i < n_per_class * 2 // 3 else ("dev" if i % 2 else "test")
                out.append(
                    {
                        "id": f"syn-{lang}-{label}-{i}",
                        "lang": lang,
                        "text": " ".join(toks),
                        "label": label,
                        "split": split,
                    }
                )
    return out


def synthetic_translation_records(n: int = 48, seed: int = 0) -> list[dict[str, Any]]:
    """Word-by-word en→de/fr sentences: a learnable translation task for tests."""
    rng = random.Random(seed)
    en = " ".join(_SYN_LEXICON["en"].values()).split()
    tables = {
        lang: dict(zip(en, " ".join(_SYN_LEXICON[lang].values()).split(), strict=True))
        for lang in ("de", "fr")
    }
    out = []
    for i in range(n):
        tgt = "de" if i % 2 else "fr"
        words = rng.sample(en, rng.randint(3, 5))
        out.append(
            {
                "id": f"syn-mt-{i}",
                "src_lang": "en",
                "tgt_lang": tgt,
                "source": " ".join(words),
                "target": " ".join(tables[tgt][w] for w in words),
                "split": "train" if i % 6 else "dev",
            }
        )
    return out


def synthetic_texts() -> list[str]:
    """All words of the synthetic sets, to build a tiny word-level tokenizer."""
    words: list[str] = []
    for lang, table in _SYN_LEXICON.items():
        words += " ".join(table.values()).split() + _SYN_FILLER[lang].split()
    return [" ".join(words), "Topic : en de fr -> sports music science food"]
