"""Score a fine-tuned run on the held-out task data: per-example class logits on the clean and
orthographically perturbed test items (and the dev items temperature scaling is fitted on), or
greedy translations of the devtest sources. One row per (item, perturbation, severity), written
as Parquet; the report (``evaluation/report.py``) computes every metric from these rows.

Items are a seeded sample per language that depends only on the evaluation seed, never on the
run, so every method and training seed is scored on the same examples (the paired tests need
that). The model is loaded with its adapter merged into the weights: scoring then costs what the
base model costs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from evaluation.perturb import PERTURBATIONS, perturb

CLASSIFICATION_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("lang", pa.string()),
        ("item_id", pa.string()),
        ("perturbation", pa.string()),
        ("severity", pa.float64()),
        ("gold", pa.int64()),
        ("logits", pa.list_(pa.float32())),
    ]
)
TRANSLATION_SCHEMA = pa.schema(
    [
        ("src_lang", pa.string()),
        ("tgt_lang", pa.string()),
        ("item_id", pa.string()),
        ("perturbation", pa.string()),
        ("severity", pa.float64()),
        ("source", pa.string()),
        ("reference", pa.string()),
        ("hypothesis", pa.string()),
    ]
)


@dataclass
class RobustnessSpec:
    """Which perturbed copies of the test items to score (a subset: each copy costs a pass)."""

    perturbations: list[str] = field(default_factory=lambda: sorted(PERTURBATIONS))
    severities: list[float] = field(default_factory=lambda: [0.25, 0.75])
    langs: list[str] = field(default_factory=lambda: ["fr", "ru", "zh"])
    items_per_lang: int = 40

    def validate(self) -> RobustnessSpec:
        unknown = sorted(set(self.perturbations) - set(PERTURBATIONS))
        if unknown:
            raise ValueError(f"unknown perturbations {unknown}; known: {sorted(PERTURBATIONS)}")
        if any(not 0 < s <= 1 for s in self.severities):
            raise ValueError(f"severities must be in (0, 1], got {self.severities}")
        return self


@dataclass
class PredictConfig:
    """What to score. ``langs`` empty: every language in the data."""

    run_dir: str
    data: str
    out: str
    task: str = "classification"
    langs: list[str] = field(default_factory=list)
    test_per_lang: int = 100
    dev_per_lang: int = 50
    seed: int = 0
    batch_size: int = 32
    max_length: int = 64
    max_new_tokens: int = 32
    robustness: RobustnessSpec = field(default_factory=RobustnessSpec)
    threads: int | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictConfig:
        d = dict(data)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown evaluation config keys {unknown}")
        if isinstance(d.get("robustness"), Mapping):
            d["robustness"] = RobustnessSpec(**d["robustness"])
        cfg = cls(**d)
        if cfg.task not in ("classification", "translation"):
            raise ValueError(f"task must be classification or translation, got {cfg.task!r}")
        cfg.robustness.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_per_language(
    records: Sequence[Mapping[str, Any]], n: int, seed: int, key: str = "lang"
) -> list[dict[str, Any]]:
    """Up to ``n`` records per value of ``key``, a seeded sample that is the same in every run."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted(records, key=lambda r: str(r["id"])):
        groups.setdefault(str(rec[key]), []).append(dict(rec))
    out = []
    for value in sorted(groups):
        items = groups[value]
        if len(items) > n:
            items = random.Random(f"{seed}/{value}").sample(items, n)
        out += sorted(items, key=lambda r: str(r["id"]))
    return out


def _rows(records: Sequence[Mapping[str, Any]], split: str, name: str, severity: float) -> dict:
    return {
        "split": [split] * len(records),
        "lang": [str(r["lang"]) for r in records],
        "item_id": [str(r["id"]) for r in records],
        "perturbation": [name] * len(records),
        "severity": [float(severity)] * len(records),
    }


def predict_classification(
    model: Any, tokenizer: Any, task: Any, records: Sequence[Mapping[str, Any]], cfg: PredictConfig
) -> pa.Table:
    """Class logits (log-softmax over the verbalisers) for dev, clean test and perturbed test."""
    from training.data import score_classification

    recs = [r for r in records if r["label"] in task.labels]
    if cfg.langs:
        recs = [r for r in recs if r["lang"] in cfg.langs]
    test = sample_per_language(
        [r for r in recs if r["split"] == "test"], cfg.test_per_lang, cfg.seed
    )
    dev = sample_per_language([r for r in recs if r["split"] == "dev"], cfg.dev_per_lang, cfg.seed)
    if not test:
        raise ValueError(f"{cfg.data}: no test records in languages {cfg.langs or 'any'}")
    spec = cfg.robustness
    robust = sample_per_language(
        [r for r in test if r["lang"] in spec.langs], spec.items_per_lang, cfg.seed
    )
    passes: list[tuple[str, str, float, list[dict[str, Any]]]] = [
        ("dev", "clean", 0.0, dev),
        ("test", "clean", 0.0, test),
    ]
    for name in spec.perturbations:
        for sev in spec.severities:
            noisy = [
                dict(r, text=perturb(str(r["text"]), name, sev, seed=f"{cfg.seed}/{r['id']}"))
                for r in robust
            ]
            passes.append(("test", name, sev, noisy))
    columns: dict[str, list] = {f.name: [] for f in CLASSIFICATION_SCHEMA}
    total = sum(len(p[3]) for p in passes)
    with tqdm(total=total, desc="scoring", unit="item", disable=not cfg.progress) as bar:
        for split, name, sev, items in passes:
            if not items:
                continue
            probs = score_classification(
                model, tokenizer, items, task, cfg.batch_size, cfg.max_length
            )
            logits = np.log(np.clip(probs, 1e-12, None)).astype(np.float32)
            for k, v in _rows(items, split, name, sev).items():
                columns[k] += v
            columns["gold"] += [task.labels.index(r["label"]) for r in items]
            columns["logits"] += [row.tolist() for row in logits]
            bar.update(len(items))
    return pa.table(columns, schema=CLASSIFICATION_SCHEMA)


def generate_translations(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    template: str,
    batch_size: int = 16,
    max_length: int = 64,
    max_new_tokens: int = 32,
    progress: bool = False,
) -> list[str]:
    """Greedy decoding, batched with left padding, of the prompt the model was trained on (the
    source cut to fit ``max_length``); the first line of the output is the answer (the
    training target is one line, and a model may go on with another "xx:" turn)."""
    import torch

    from training.data import translation_prompt

    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for i in tqdm(range(0, len(records), batch_size), desc="translating", disable=not progress):
        batch = records[i : i + batch_size]
        prompts = [translation_prompt(tokenizer, r, template, max_length) for r in batch]
        n = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), n), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(prompts):
            ids[j, n - len(p) :] = torch.tensor(p)
            mask[j, n - len(p) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        for row in gen[:, n:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            out.append(text.strip().split("\n", 1)[0].strip())
    return out


def predict_translation(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    cfg: PredictConfig,
    template: str,
) -> pa.Table:
    """Hypotheses for a seeded sample of devtest pairs per direction (``langs`` = the non-English
    side). Clean sources only: generation is the expensive pass on CPU, so the robustness suite
    runs on classification."""
    recs = [r for r in records if r["split"] in ("devtest", "test")]
    if cfg.langs:
        recs = [r for r in recs if {r["src_lang"], r["tgt_lang"]} - {"en"} <= set(cfg.langs)]
    for r in recs:
        r["direction"] = f"{r['src_lang']}-{r['tgt_lang']}"
    test = sample_per_language(recs, cfg.test_per_lang, cfg.seed, key="direction")
    if not test:
        raise ValueError(f"{cfg.data}: no devtest pairs in languages {cfg.langs or 'any'}")
    hyps = generate_translations(
        model, tokenizer, test, template, cfg.batch_size, cfg.max_length, cfg.max_new_tokens,
        cfg.progress,
    )  # fmt: skip
    return pa.table(
        {
            "src_lang": [r["src_lang"] for r in test],
            "tgt_lang": [r["tgt_lang"] for r in test],
            "item_id": [str(r["id"]) for r in test],
            "perturbation": ["clean"] * len(test),
            "severity": [0.0] * len(test),
            "source": [str(r["source"]) for r in test],
            "reference": [str(r["target"]) for r in test],
            "hypothesis": hyps,
        },
        schema=TRANSLATION_SCHEMA,
    )


def predict(cfg: PredictConfig) -> pa.Table:
    """Load the run's model (adapter merged) and score it; writes and returns the table."""
    import torch

    from quality_models.contract import write_parquet_atomic
    from training.data import DEFAULT_MT_TEMPLATE, read_records
    from training.loader import load_finetuned

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not Path(cfg.data).is_file():
        raise FileNotFoundError(f"evaluation data not found: {cfg.data}")
    loaded = load_finetuned(cfg.run_dir, merge=True)
    records = read_records(cfg.data)
    if cfg.task == "classification":
        task = loaded.classification_task
        if task is None:
            raise ValueError(f"{cfg.run_dir} was not trained on classification")
        table = predict_classification(loaded.model, loaded.tokenizer, task, records, cfg)
    else:
        template = loaded.info.get("template") or DEFAULT_MT_TEMPLATE
        table = predict_translation(loaded.model, loaded.tokenizer, records, cfg, template)
    write_parquet_atomic(table, Path(cfg.out))
    return table
