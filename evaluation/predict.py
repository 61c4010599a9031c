"""Score a run on the held-out task data: per-example class log-probabilities on the clean and
orthographically perturbed test items (and the dev items temperature scaling is fitted on), or
greedy translations of the devtest sources. One row per (item, perturbation, severity), written
as Parquet; the report (``evaluation/report.py``) computes every metric from these rows.

* **Parallel items.** Source messages (``key``) are sampled once per evaluation seed, stratified
  by label, among the keys every scored language has, and every language's translation of them
  is scored: the same messages in every language, for every method and training seed, so every
  comparison is paired and the parity rule can compare languages item by item. Data without
  parallel keys falls back to a stratified sample per language.
* **One pass.** Dev, clean test and perturbed test items are encoded once, identical inputs
  scored once, and batched by length (sorted, a token budget per batch, left padding only to the
  longest of a batch of near-equal lengths); one forward per input under ``inference_mode`` with
  the logits of the last position only (``training.data.class_logits``, the training loss's
  softmax).
* **Perturbed copies** (``evaluation.perturb``) are seeded by (evaluation seed, item id), aimed at
  each target severity, and carry the measured ``corruption``; copies a perturbation left
  unchanged are dropped.
* **Baselines.** ``method="lexical"`` fits the character-n-gram naive Bayes
  (``training.tasks.LexicalBaseline``) on the train rows of ``train_data`` in ``train_langs``
  and writes its per-class log-probabilities as the logits of the same rows; ``untuned`` runs
  are the base model as the trainer recorded it (``training.loader``).

Classification rows: ``split, lang, item_id, key, perturbation, severity, corruption, gold,
logits, overlap_controlled, protocol``. Translation rows: ``src_lang, tgt_lang, item_id, key,
perturbation, severity, source, reference, hypothesis, chrf`` (sentence chrF++, for the paired
bootstrap).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from evaluation.perturb import PERTURBATIONS, perturb_measured

__all__ = [
    "CLASSIFICATION_SCHEMA",
    "TRANSLATION_SCHEMA",
    "PredictConfig",
    "RobustnessSpec",
    "class_log_probs",
    "footprint_with_steps",
    "generate_translations",
    "parallel_sample",
    "predict",
    "predict_classification",
    "predict_translation",
    "sample_per_language",
]

CLASSIFICATION_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("lang", pa.string()),
        ("item_id", pa.string()),
        ("key", pa.string()),
        ("perturbation", pa.string()),
        ("severity", pa.float64()),  # the target share of characters changed
        ("corruption", pa.float64()),  # the share measured on this item
        ("gold", pa.int64()),
        ("logits", pa.list_(pa.float32())),  # log-probabilities over the classes
        ("overlap_controlled", pa.bool_()),
        ("protocol", pa.string()),
    ]
)
TRANSLATION_SCHEMA = pa.schema(
    [
        ("src_lang", pa.string()),
        ("tgt_lang", pa.string()),
        ("item_id", pa.string()),
        ("key", pa.string()),
        ("perturbation", pa.string()),
        ("severity", pa.float64()),
        ("source", pa.string()),
        ("reference", pa.string()),
        ("hypothesis", pa.string()),
        ("chrf", pa.float64()),  # sentence chrF++ (sacrebleu, word_order=2)
    ]
)
CLEAN = "clean"
METHODS_WITHOUT_RUN = ("lexical",)


@dataclass
class RobustnessSpec:
    """Which perturbed copies of the test items to score: ``items_per_lang`` of the sampled test
    keys (the same messages in every language of ``langs``), each perturbation aimed at each
    target severity (share of characters changed)."""

    perturbations: list[str] = field(default_factory=lambda: sorted(PERTURBATIONS))
    severities: list[float] = field(default_factory=lambda: [0.05, 0.15])
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
    """What to score. ``langs`` empty: every language in the data. ``method="lexical"``: the
    lexical baseline fitted on ``train_data`` (rows with ``split == "train"`` in ``train_langs``)
    instead of a run's model; ``protocol`` is written on every classification row."""

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
    protocol: str = "zero_shot"
    method: str = ""  # "lexical": no model; anything else: the run's model
    train_data: str = ""
    train_langs: list[str] = field(default_factory=lambda: ["en"])
    max_batch_tokens: int = 0  # tokens per forward (items x longest); 0: batch_size x max_length
    device: str = "auto"  # auto: cuda when available, else cpu

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictConfig:
        d = dict(data)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown evaluation config keys {unknown}")
        if isinstance(d.get("robustness"), Mapping):
            d["robustness"] = RobustnessSpec(**d["robustness"])
        return cls(**d).validate()

    def validate(self) -> PredictConfig:
        if self.task not in ("classification", "translation"):
            raise ValueError(f"task must be classification or translation, got {self.task!r}")
        if self.method == "lexical":
            if self.task != "classification":
                raise ValueError("the lexical baseline scores classification only")
            if not self.train_data:
                raise ValueError("the lexical baseline needs train_data (the rows it is fitted on)")
            if not self.train_langs:
                raise ValueError("the lexical baseline needs train_langs")
        self.robustness.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- item samples


def _key(rec: Mapping[str, Any]) -> str:
    key = rec.get("key")
    return str(key) if key is not None and key == key and str(key) else str(rec["id"])


def _stratified(keys: Sequence[str], strata: Mapping[str, str], n: int, salt: str) -> list[str]:
    """``n`` of ``keys`` (all when fewer), allocated to the strata in proportion to their sizes
    (largest remainders), a seeded sample within each; sorted."""
    keys = sorted(keys)
    if len(keys) <= n:
        return keys
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(strata.get(k, ""), []).append(k)
    names = sorted(groups)
    quota = {g: n * len(groups[g]) / len(keys) for g in names}
    take = {g: int(quota[g]) for g in names}
    rest = n - sum(take.values())
    for g in sorted(names, key=lambda g: (-(quota[g] - take[g]), g))[:rest]:
        take[g] += 1
    out: list[str] = []
    for g in names:
        out += random.Random(f"{salt}/{g}").sample(groups[g], take[g])
    return sorted(out)


def parallel_sample(
    records: Sequence[Mapping[str, Any]],
    n: int,
    seed: int | str,
    *,
    group: str = "lang",
    stratum: str = "label",
    salt: str = "",
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``n`` source messages (``key``), sampled once, stratified by ``stratum``, among the
    keys that every value of ``group`` (language, direction) has, and every group's record of
    them; ``(records, True)``. Without such keys (data that is not parallel) each group gets its
    own stratified sample: ``(records, False)``. Deterministic for a seed, whatever the order."""
    by_group: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in sorted(records, key=lambda r: str(r["id"])):
        by_group.setdefault(str(rec[group]), {}).setdefault(_key(rec), dict(rec))
    if not by_group:
        return [], True
    common = set.intersection(*(set(v) for v in by_group.values()))
    strata = {k: str(r.get(stratum, "")) for v in by_group.values() for k, r in v.items()}
    out: list[dict[str, Any]] = []
    if common:
        keys = _stratified(sorted(common), strata, n, f"{seed}/{salt}")
        for g in sorted(by_group):
            out += [by_group[g][k] for k in keys]
        return out, True
    for g in sorted(by_group):
        keys = _stratified(sorted(by_group[g]), strata, n, f"{seed}/{salt}/{g}")
        out += [by_group[g][k] for k in keys]
    return out, False


def sample_per_language(
    records: Sequence[Mapping[str, Any]], n: int, seed: int, key: str = "lang"
) -> list[dict[str, Any]]:
    """Up to ``n`` records per value of ``key``, a seeded sample that is the same in every run
    (each group on its own; :func:`parallel_sample` samples the same messages in all)."""
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


# --------------------------------------------------------------------------- scoring

Scorer = Callable[[Sequence[str]], np.ndarray]


def _encode(tokenizer: Any, texts: Sequence[str], template: str, max_length: int) -> list[list]:
    """The prompts of ``training.data.encode_classification`` (BOS, template prefix, the text
    cut to fit ``max_length``, suffix), the texts tokenised in one batched call."""
    prefix, suffix = template.split("{text}", 1)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pre = bos + list(tokenizer.encode(prefix, add_special_tokens=False))
    suf = list(tokenizer.encode(suffix, add_special_tokens=False))
    budget = max_length - len(pre) - len(suf)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text after the template")
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [pre + list(t[:budget]) + suf for t in ids]


def _batches(lengths: Sequence[int], max_tokens: int, max_padding: float = 0.1) -> list[list[int]]:
    """Indices sorted by length, cut into batches whose padded size (items x longest) stays
    within ``max_tokens`` and whose padding stays within ``max_padding`` of it (one item at
    least): near-equal lengths share a batch, so almost no padded token is computed."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        padded = (len(cur) + 1) * n
        if cur and (padded > max_tokens or padded - real - n > max_padding * padded):
            out.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        out.append(cur)
    return out


def class_log_probs(
    model: Any,
    tokenizer: Any,
    task: Any,
    texts: Sequence[str],
    max_length: int = 64,
    max_batch_tokens: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """(N, C) log-softmax over the verbaliser logits at the last prompt position (the training
    loss's softmax) for each text; identical prompts are scored once, batches are sorted by
    length."""
    import torch

    from training.data import class_logits

    ids = _encode(tokenizer, texts, task.template, max_length)
    out = np.zeros((len(ids), len(task.labels)), dtype=np.float32)
    if not ids:
        return out
    unique: dict[tuple, int] = {}
    first = [unique.setdefault(tuple(p), len(unique)) for p in ids]
    prompts = [list(p) for p in unique]
    lengths = [len(p) for p in prompts]
    device = next(iter(model.parameters())).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    label_ids = torch.tensor(task.label_token_ids, device=device)
    scores = np.zeros((len(prompts), len(task.labels)), dtype=np.float32)
    was_training = model.training
    model.eval()
    with (
        torch.inference_mode(),
        tqdm(total=len(prompts), desc="scoring", unit="item", disable=not progress) as bar,
    ):
        for batch in _batches(lengths, max(max_batch_tokens, max(lengths))):
            n = max(lengths[i] for i in batch)
            input_ids = torch.full((len(batch), n), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), n), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: the label slot is at -1
                input_ids[row, n - lengths[i] :] = torch.tensor(prompts[i])
                mask[row, n - lengths[i] :] = 1
            inputs = {
                "input_ids": input_ids.to(device),
                "attention_mask": mask.to(device),
                "position_ids": (mask.cumsum(-1) - 1).clamp_min(0).to(device),
                "label_token_ids": label_ids,
            }
            logits = class_logits(model, inputs)
            scores[batch] = torch.log_softmax(logits, -1).float().cpu().numpy()
            bar.update(len(batch))
    model.train(was_training)
    out[:] = scores[first]
    return np.maximum(out, np.log(1e-12)).astype(np.float32)


def _lexical_scorer(cfg: PredictConfig) -> tuple[Scorer, list[str], dict[str, Any]]:
    """The lexical baseline fitted on the train rows of ``cfg.train_langs``: per-class
    log-probabilities (the classes sorted, as the trainer orders them) and a footprint."""
    from quality_models.contract import read_parquet
    from training.tasks import LexicalBaseline

    path = Path(cfg.train_data)
    if not path.is_file():
        raise FileNotFoundError(f"lexical baseline train data not found: {path}")
    train = read_parquet(path) if path.suffix == ".parquet" else None
    if train is None:
        from training.data import read_records

        train = pa.Table.from_pylist(read_records(path))
    t0 = time.perf_counter()
    baseline = LexicalBaseline().fit(train, list(cfg.train_langs))
    fit_s = time.perf_counter() - t0
    nb = baseline.model[-1]
    labels = [str(c) for c in nb.classes_]

    def score(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(labels)), dtype=np.float32)
        logp = baseline.model.predict_log_proba(list(texts))
        return np.maximum(logp, np.log(1e-12)).astype(np.float32)

    params = int(nb.feature_log_prob_.size + nb.class_log_prior_.size)
    footprint = {
        "method": "lexical",
        "model": "char-n-gram naive Bayes",
        "steps_run": 0,
        "train_wall_s": fit_s,
        "step_time_s_mean": None,
        "trainable_params": params,
        "total_params": params,
        "train_langs": list(cfg.train_langs),
        "train_rows": int(sum(nb.class_count_)),
    }
    return score, labels, footprint


def _model_scorer(model: Any, tokenizer: Any, task: Any, cfg: PredictConfig) -> Scorer:
    budget = cfg.max_batch_tokens or cfg.batch_size * cfg.max_length

    def score(texts: Sequence[str]) -> np.ndarray:
        return class_log_probs(
            model, tokenizer, task, texts, cfg.max_length, budget, progress=cfg.progress
        )

    return score


def _item_rows(records: Sequence[Mapping[str, Any]], labels: Sequence[str], cfg: PredictConfig):
    """Every (split, item, perturbation, severity) to score, with its text; no-op copies gone."""
    index = {label: i for i, label in enumerate(labels)}
    recs = [r for r in records if r.get("label") in index]
    if cfg.langs:
        recs = [r for r in recs if r["lang"] in cfg.langs]
    test, parallel = parallel_sample(
        [r for r in recs if r["split"] == "test"], cfg.test_per_lang, cfg.seed, salt="test"
    )
    if not test:
        raise ValueError(f"{cfg.data}: no test records in languages {cfg.langs or 'any'}")
    dev, _ = parallel_sample(
        [r for r in recs if r["split"] == "dev"], cfg.dev_per_lang, cfg.seed, salt="dev"
    )
    spec = cfg.robustness
    robust = []
    if spec.perturbations and spec.severities:
        test_keys = sorted({_key(r) for r in test})
        strata = {_key(r): str(r["label"]) for r in test}
        if parallel:
            keys = set(_stratified(test_keys, strata, spec.items_per_lang, f"{cfg.seed}/robust"))
            robust = [r for r in test if r["lang"] in spec.langs and _key(r) in keys]
        else:
            pool = [r for r in test if r["lang"] in spec.langs]
            robust, _ = parallel_sample(pool, spec.items_per_lang, cfg.seed, salt="robust")
    rows: list[dict[str, Any]] = []

    def add(rec, split, name, sev, text, corruption):
        oc = rec.get("overlap_controlled")
        rows.append(
            {
                "split": split,
                "lang": str(rec["lang"]),
                "item_id": str(rec["id"]),
                "key": _key(rec),
                "perturbation": name,
                "severity": float(sev),
                "corruption": float(corruption),
                "gold": index[rec["label"]],
                "overlap_controlled": None if oc is None or oc != oc else bool(oc),
                "protocol": cfg.protocol,
                "text": text,
            }
        )

    for split, items in (("dev", dev), ("test", test)):
        for r in items:
            add(r, split, CLEAN, 0.0, str(r["text"]), 0.0)
    for name in spec.perturbations:
        for sev in spec.severities:
            for r in robust:
                p = perturb_measured(str(r["text"]), name, sev, f"{cfg.seed}/{r['id']}", r["lang"])
                if p.text != str(r["text"]):  # a copy the perturbation left unchanged is no test
                    add(r, "test", name, sev, p.text, p.corruption)
    return rows


def predict_classification(
    scorer: Scorer, labels: Sequence[str], records: Sequence[Mapping[str, Any]], cfg: PredictConfig
) -> pa.Table:
    """Class log-probabilities for dev, clean test and perturbed test, scored in one pass."""
    rows = _item_rows(records, labels, cfg)
    logits = scorer([r.pop("text") for r in rows])
    columns: dict[str, list] = {f.name: [r[f.name] for r in rows] for f in CLASSIFICATION_SCHEMA
                                if f.name != "logits"}  # fmt: skip
    columns["logits"] = [row.tolist() for row in np.asarray(logits, dtype=np.float32)]
    return pa.table(columns, schema=CLASSIFICATION_SCHEMA)


# --------------------------------------------------------------------------- translation


def _newline_stop(tokenizer: Any, start: int):
    """A per-row stopping criterion: a row is done once its output (from position ``start``)
    holds a newline after some text, which ends the first line, the answer; a batch stops when
    every row has answered. The answer is the same as from a full-length generation."""
    import torch
    from transformers import StoppingCriteria

    class FirstLine(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            done = ["\n" in t.lstrip() for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return FirstLine()


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
    """Greedy decoding of the prompt the model was trained on (the source cut to fit
    ``max_length``), batched by prompt length with left padding; a row stops at its first
    newline (the training target is one line, and a model may go on with another "xx:" turn)
    and the first line of the output is the answer."""
    import torch

    from training.data import translation_prompt

    was_training = model.training
    model.eval()
    device = next(iter(model.parameters())).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [translation_prompt(tokenizer, r, template, max_length) for r in records]
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(chunks, desc="translating", disable=not progress):
        n = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(batch):
            ids[j, n - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[j, n - len(prompts[i]) :] = 1
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=[_newline_stop(tokenizer, n)],
                use_cache=True,
            )
        for j, i in enumerate(batch):
            text = tokenizer.decode(gen[j, n:], skip_special_tokens=True)
            out[i] = text.strip().split("\n", 1)[0].strip()
    model.train(was_training)
    return out


def predict_translation(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    cfg: PredictConfig,
    template: str,
) -> pa.Table:
    """Hypotheses for the same sampled source messages (``key``) in every direction
    (``langs`` = the non-English side), stratified by domain, with sentence chrF++. Clean
    sources only: generation is the expensive pass on CPU, so the robustness suite runs on
    classification."""
    from sacrebleu.metrics import CHRF

    recs = [dict(r) for r in records if r["split"] in ("devtest", "test")]
    if cfg.langs:
        recs = [r for r in recs if {r["src_lang"], r["tgt_lang"]} - {"en"} <= set(cfg.langs)]
    for r in recs:
        r["direction"] = f"{r['src_lang']}-{r['tgt_lang']}"
    test, _ = parallel_sample(
        recs, cfg.test_per_lang, cfg.seed, group="direction", stratum="domain", salt="mt"
    )
    if not test:
        raise ValueError(f"{cfg.data}: no devtest pairs in languages {cfg.langs or 'any'}")
    hyps = generate_translations(
        model, tokenizer, test, template, cfg.batch_size, cfg.max_length, cfg.max_new_tokens,
        cfg.progress,
    )  # fmt: skip
    chrf = CHRF(word_order=2)
    refs = [str(r["target"]) for r in test]
    return pa.table(
        {
            "src_lang": [r["src_lang"] for r in test],
            "tgt_lang": [r["tgt_lang"] for r in test],
            "item_id": [str(r["id"]) for r in test],
            "key": [_key(r) for r in test],
            "perturbation": [CLEAN] * len(test),
            "severity": [0.0] * len(test),
            "source": [str(r["source"]) for r in test],
            "reference": refs,
            "hypothesis": hyps,
            "chrf": [
                chrf.sentence_score(h, [ref]).score for h, ref in zip(hyps, refs, strict=True)
            ],
        },
        schema=TRANSLATION_SCHEMA,
    )


# --------------------------------------------------------------------------- footprint


def footprint_with_steps(run_dir: str | Path) -> dict[str, Any]:
    """The trainer's ``footprint.json`` of a run with ``step_times``: the per-step wall times
    of its ``metrics.jsonl`` (the last record of each step, also across a resume), without the
    warm-up steps the trainer's own mean leaves out (the first two when there are more than
    four), so the report's intervals come from repeated measures of the same quantity."""
    run_dir = Path(run_dir)
    path = run_dir / "footprint.json"
    foot = json.loads(path.read_text()) if path.is_file() else {}
    per_step: dict[int, float] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            dt = rec.get("step_time_s") if isinstance(rec, dict) else None
            if rec.get("event") is None and isinstance(dt, int | float) and "step" in rec:
                per_step[int(rec["step"])] = float(dt)
    times = [per_step[s] for s in sorted(per_step)]
    warm = times[2:] if len(times) > 4 else times
    foot["step_times"] = warm
    foot["step_times_warmup"] = len(times) - len(warm)
    return foot


# --------------------------------------------------------------------------- entry point


def predict(cfg: PredictConfig) -> pa.Table:
    """Load the run's model (adapter merged) or fit the lexical baseline, score, write the
    table to ``cfg.out`` (and, for the lexical baseline, its footprint beside it)."""
    import torch

    from quality_models.contract import write_parquet_atomic
    from training.data import DEFAULT_MT_TEMPLATE, read_records

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not Path(cfg.data).is_file():
        raise FileNotFoundError(f"evaluation data not found: {cfg.data}")
    records = read_records(cfg.data)
    out = Path(cfg.out)
    if cfg.method == "lexical":
        scorer, labels, footprint = _lexical_scorer(cfg)
        table = predict_classification(scorer, labels, records, cfg)
        write_parquet_atomic(table, out)
        tmp = out.with_suffix(".footprint.json.tmp")
        tmp.write_text(json.dumps(footprint, indent=2))
        tmp.replace(out.with_suffix(".footprint.json"))
        return table
    from training.loader import load_finetuned

    loaded = load_finetuned(cfg.run_dir, merge=True)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.model.to(device)
    if cfg.task == "classification":
        task = loaded.classification_task
        if task is None:
            raise ValueError(f"{cfg.run_dir} was not trained on classification")
        scorer = _model_scorer(loaded.model, loaded.tokenizer, task, cfg)
        table = predict_classification(scorer, task.labels, records, cfg)
    else:
        template = loaded.info.get("template") or DEFAULT_MT_TEMPLATE
        table = predict_translation(loaded.model, loaded.tokenizer, records, cfg, template)
    write_parquet_atomic(table, out)
    return table
