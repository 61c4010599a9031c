"""Experiments: a YAML plan (methods x seeds on one governance arm, translation runs, governance
ablation arms) materialised as ``finetune`` + ``model_evaluation`` partitions, then the report
assets. ``make demo`` runs ``configs/demo.yaml``; ``make reproduce`` runs
``configs/reproduce.yaml``. Finished runs are reused, so an interrupted experiment continues
where it stopped when the same command is run again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from assets.partitions import parse_run_key, run_key, variant_run_key
from evaluation.frames import TRANSLATE_TRAIN
from pipelines.runner import materialize_partitions


@dataclass
class ExperimentPlan:
    """Which (variant, run) partitions an experiment trains and scores, and the shared config."""

    experiment: str
    variant: str = "full"
    methods: list[str] = field(default_factory=lambda: ["lora", "hybrid"])
    seeds: list[int] = field(default_factory=lambda: [0])
    # reference rows of every table, scored once (deterministic): lexical, untuned
    baselines: list[str] = field(default_factory=list)
    # translate-train runs (``tt-``: trained on every task language), a second table
    translate_train_methods: list[str] = field(default_factory=list)
    translate_train_seeds: list[int] = field(default_factory=lambda: [0])
    translation_methods: list[str] = field(default_factory=list)
    translation_seeds: list[int] = field(default_factory=lambda: [0])
    ablation_variants: list[str] = field(default_factory=list)
    ablation_runs: list[str] = field(default_factory=lambda: ["hybrid-s0"])
    finetune: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentPlan:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"experiment config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        plan = cls(**data)
        for _, run in plan.keys():  # a typo in a method name is an error now, not at run time
            try:
                parse_run_key(run)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        return plan

    def keys(self) -> list[tuple[str, str]]:
        """(variant, run) in the order that makes partial results most useful: the baselines,
        every method at the first seed, translation, the other seeds, the governance ablation
        arms (their verdict needs every seed), then the translate-train table."""
        out: list[tuple[str, str]] = [(self.variant, run_key(b, 0)) for b in self.baselines]
        for seed in self.seeds[:1]:
            out += [(self.variant, run_key(m, seed)) for m in self.methods]
        for seed in self.translation_seeds:
            out += [
                (self.variant, run_key(m, seed, "translation")) for m in self.translation_methods
            ]
        for seed in self.seeds[1:]:
            out += [(self.variant, run_key(m, seed)) for m in self.methods]
        out += [(v, r) for r in self.ablation_runs for v in self.ablation_variants]
        for seed in self.translate_train_seeds:
            out += [
                (self.variant, run_key(m, seed, protocol=TRANSLATE_TRAIN))
                for m in self.translate_train_methods
            ]
        return list(dict.fromkeys(out))

    def variants(self) -> list[str]:
        return sorted({v for v, _ in self.keys()})

    def run_config(self) -> dict[str, Any]:
        name = {"experiment": self.experiment}
        evaluation = {"translation_langs": self.finetune.get("translation_langs", ["de"])}
        return {
            "ops": {
                "finetune": {"config": {**self.finetune, **name}},
                "model_evaluation": {"config": {**evaluation, **self.evaluation, **name}},
                "reports": {"config": {"variant": self.variant, **self.report, **name}},
            }
        }


def _op_config(run_config: dict[str, Any], ops: Sequence[str]) -> dict[str, Any]:
    return {"ops": {k: v for k, v in run_config["ops"].items() if k in ops}}


def ensure_inputs(defs: dg.Definitions, instance: dg.DagsterInstance, plan: ExperimentPlan) -> None:
    """Materialise what the plan trains on when it is not on disk yet: the task data, each
    variant's governance (raw → curated → ledger) and governed training set, the base model."""
    from assets.resources import GovtuneHome
    from assets.tasks import DEFAULT_LANGUAGES, TASK_LANGUAGES
    from pipelines.runner import run_governance, run_task_data
    from training.models import SHIPPED_MODELS

    home = GovtuneHome()
    run_task_data(defs, instance)
    if not home.path("tasks", "classification", "en.parquet").is_file():
        materialize_partitions(defs, instance, "classification_task", TASK_LANGUAGES)
        materialize_partitions(defs, instance, "translation_task", list(DEFAULT_LANGUAGES))
    ungoverned = [v for v in plan.variants() if not home.ledger_file(v).is_file()]
    if ungoverned:
        run_governance(defs, instance, ungoverned)
    missing = [
        v
        for v in plan.variants()
        if not home.path("tasks", "train", v, "trainer_data.parquet").is_file()
    ]
    if missing:
        materialize_partitions(defs, instance, "classification_train", missing)
    model = plan.finetune.get("model", "gemma-3-270m")
    if model in SHIPPED_MODELS and not home.path("models", model).is_dir():
        materialize_partitions(
            defs, instance, "base_model", [None],
            run_config={"ops": {"base_model": {"config": {"name": model}}}},
        )  # fmt: skip


def run_experiment(
    plan: ExperimentPlan, instance: dg.DagsterInstance, until: str = "reports"
) -> int:
    """Train and score every partition of the plan, then materialise the report assets
    (``until="finetune"`` stops after training)."""
    from assets.partitions import run_partitions
    from pipelines.definitions import defs

    ensure_inputs(defs, instance, plan)
    config = plan.run_config()
    keys = plan.keys()
    new = sorted({r for _, r in keys} - set(instance.get_dynamic_partitions(run_partitions.name)))
    if new:  # the plan's runs become partitions: the UI lists what exists, not every method
        instance.add_dynamic_partitions(run_partitions.name, new)
    print(f"experiment {plan.experiment}: {len(keys)} runs", flush=True)
    selection = ["finetune"] if until == "finetune" else ["finetune", "model_evaluation"]
    materialize_partitions(
        defs, instance, selection, [variant_run_key(v, r) for v, r in keys],
        run_config=_op_config(config, selection),
    )  # fmt: skip
    if until == "finetune":
        return 0
    materialize_partitions(
        defs, instance, REPORT_ASSETS, [None], run_config=_op_config(config, ["reports"])
    )
    return 0


REPORT_ASSETS = [
    "table_accuracy_parity",
    "table_translation_calibration",
    "table_orthographic_robustness",
    "table_governance_ablation",
    "table_footprint",
    "figure_cost_quality_frontier",
]
