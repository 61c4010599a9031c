"""The governance pipeline without Dagster: the same stage functions the assets call, chained.

raw -> normalize -> language_id -> (per language) dedup -> quality -> perplexity -> curated.
Every stage returns kept + rejected; the ledger collects every rejected row, so
``input = kept + rejected`` holds per stage (and per language for the per-language stages).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .config import GovernanceConfig, as_dict
from .contract import StageResult, empty_rejected, write_parquet_atomic
from .contract import write_text_atomic as _write_text
from .dedup import dedup_stage, split_by_language
from .heuristics import quality_stage
from .langid import language_id_stage
from .normalize import normalize_stage

VARIANTS = ("full", "no_lid", "no_dedup", "no_quality", "none", "rehydrate")
PER_LANGUAGE_STAGES = ("dedup", "quality", "perplexity")


def variant_config(base: GovernanceConfig, variant: str) -> GovernanceConfig:
    """The governance config of one ablation arm. ``rehydrate`` governs exactly like ``full``
    (one kept representative per duplicate cluster, with its ``dup_cluster_size``); the arm
    differs in training, which up-weights each representative by its cluster size (FineWeb-2's
    rehydration), where ``no_dedup`` keeps every copy at weight 1."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown governance variant {variant!r}; choose from {VARIANTS}")
    cfg = copy.deepcopy(base)
    if variant in ("no_lid", "none"):
        cfg.language_id.enabled = False
    if variant in ("no_dedup", "none"):
        cfg.dedup.enabled = False
    if variant in ("no_quality", "none"):
        cfg.quality.enabled = False
        cfg.perplexity = {**cfg.perplexity, "enabled": False}
    return cfg


@dataclass
class StageReport:
    stage: str
    lang: str | None
    summary: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class CurationResult:
    curated: dict[str, pa.Table]
    rejected: pa.Table
    reports: list[StageReport]

    def totals(self) -> dict[str, int]:
        kept = sum(t.num_rows for t in self.curated.values())
        return {"kept": kept, "rejected": self.rejected.num_rows}


def passthrough(table: pa.Table, stage: str, why: str) -> StageResult:
    return StageResult(table, empty_rejected(), {"skipped": why, "stage": stage})


def dedup_or_skip(table: pa.Table, config: GovernanceConfig, lang: str, variant: str = "full"):
    """Dedup, or a pass-through when the arm disables it (``variant`` is kept for callers that
    name the arm; every arm with dedup enabled dedups the same way)."""
    if not config.dedup.enabled:
        return passthrough(table, "dedup", "dedup disabled")
    if config.engine.name != "local" or table.num_rows > config.engine.batch_rows:
        from .dist_dedup import dedup_with_engine  # sharded, on the configured engine

        return dedup_with_engine(table, config.dedup, lang, config.engine)
    return dedup_stage(table, config.dedup, lang)


def quality_or_skip(table: pa.Table, config: GovernanceConfig) -> StageResult:
    if not config.quality.enabled:
        return passthrough(table, "quality", "quality rules disabled")
    return quality_stage(table, config)


def perplexity_or_skip(
    table: pa.Table, config: GovernanceConfig, models: Mapping[str, str] | None
) -> StageResult:
    settings = dict(config.perplexity)
    if settings.pop("enabled", True) is False:
        return passthrough(table, "perplexity", "perplexity filter disabled")
    if not models:
        return passthrough(table, "perplexity", "no KenLM models given")
    from .perplexity import KenLMConfig, perplexity_stage

    return perplexity_stage(table, models, KenLMConfig.from_mapping(settings))


def per_language(
    table: pa.Table,
    lang: str,
    config: GovernanceConfig,
    models: Mapping[str, str] | None = None,
    variant: str = "full",
) -> dict[str, StageResult]:
    """dedup -> quality -> perplexity for one language's documents."""
    out: dict[str, StageResult] = {}
    out["dedup"] = dedup_or_skip(table, config, lang, variant)
    out["quality"] = quality_or_skip(out["dedup"].kept, config)
    out["perplexity"] = perplexity_or_skip(out["quality"].kept, config, models)
    return out


def _per_language_job(args: tuple) -> dict[str, StageResult]:
    return per_language(*args)


def curate(
    raw: StageResult,
    config: GovernanceConfig,
    kenlm_models: Mapping[str, str] | None = None,
    variant: str = "full",
    workers: int | None = None,
) -> CurationResult:
    """Run every stage after ingest. ``raw`` is ingest's result (its ledger rows are kept)."""
    reports = [StageReport("ingest", None, raw.summary(), raw.metadata)]
    ledger = [raw.rejected]
    norm = normalize_stage(raw.kept, config.normalize)
    lid = language_id_stage(norm.kept, config)
    for name, res in (("normalize", norm), ("language_id", lid)):
        reports.append(StageReport(name, None, res.summary(), res.metadata))
        ledger.append(res.rejected)
    parts = split_by_language(lid.kept)
    jobs = [(part, lang, config, kenlm_models, variant) for lang, part in parts.items()]
    workers = config.workers if workers is None else workers
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_per_language_job, jobs))
    else:
        results = [_per_language_job(j) for j in jobs]
    curated: dict[str, pa.Table] = {}
    for (lang, _), stages in zip(parts.items(), results, strict=True):
        for stage in PER_LANGUAGE_STAGES:
            res = stages[stage]
            reports.append(StageReport(stage, lang, res.summary(), res.metadata))
            ledger.append(res.rejected)
        curated[lang] = stages["perplexity"].kept
    for lang in config.languages or ():  # a configured language gets a (maybe empty) dataset
        curated.setdefault(lang, lid.kept.schema.empty_table())
    rejected = pa.concat_tables(ledger) if ledger else empty_rejected()
    return CurationResult(dict(sorted(curated.items())), rejected, reports)


def invariant_violations(result: CurationResult, n_raw: int) -> list[str]:
    """``input = kept + rejected`` over the whole run and per stage."""
    problems = []
    total = result.totals()
    if total["kept"] + total["rejected"] != n_raw:
        problems.append(
            f"records in {n_raw} != kept {total['kept']} + rejected {total['rejected']}"
        )
    for r in result.reports:
        s = r.summary
        if s["input"] != s["kept"] + s["rejected"]:
            problems.append(f"{r.stage}/{r.lang}: {s}")
    return problems


def dataset_card(result: CurationResult, config: GovernanceConfig, variant: str = "full") -> str:
    """A Hugging Face style dataset card: languages, counts, settings, rejection summary."""
    langs = sorted(result.curated)
    header = ["---", "language:"] + [f"- {lang}" for lang in langs] + ["configs:"]
    for lang in langs:
        header += [
            f"- config_name: {lang}",
            "  data_files:",
            f"  - split: train\n    path: curated/{lang}.parquet",
        ]  # noqa: E501
    header += ["---", ""]
    by_lang = {}
    for r in result.reports:
        if r.lang:
            by_lang.setdefault(r.lang, {})[r.stage] = r.summary
    rows = ["| language | after LID | dedup removed | quality removed | perplexity removed | curated |",  # noqa: E501
            "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for lang in langs:
        st = by_lang.get(lang, {})
        rows.append(
            f"| {lang} | {st.get('dedup', {}).get('input', 0)} | "
            f"{st.get('dedup', {}).get('rejected', 0)} | {st.get('quality', {}).get('rejected', 0)} | "  # noqa: E501
            f"{st.get('perplexity', {}).get('rejected', 0)} | {result.curated[lang].num_rows} |"
        )
    reason_rows = ["| stage:reason | documents |", "|---|---:|"]
    stage_reason: dict[str, int] = {}
    for s, r in zip(result.rejected.column("stage").to_pylist(),
                    result.rejected.column("reason").to_pylist(), strict=True):  # fmt: skip
        stage_reason[f"{s}:{r}"] = stage_reason.get(f"{s}:{r}", 0) + 1
    reason_rows += [f"| {k} | {v} |" for k, v in sorted(stage_reason.items())]
    body = [
        f"# govtune curated dataset (governance variant `{variant}`)",
        "",
        "Produced by govtune's governance pipeline: normalisation, fastText language ID, exact "
        "and MinHash near-duplicate removal, heuristic (Gopher/C4/FineWeb) and KenLM perplexity "
        "filtering. Every dropped document is in `rejected.parquet` with its stage and reason.",
        "",
        "## Counts per language",
        *rows,
        "",
        "## Rejections",
        *reason_rows,
        "",
        "## Settings",
        "```json",
        json.dumps(as_dict(config), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "Load with `datasets.load_dataset('parquet', data_files={'train': 'curated/<lang>.parquet'})`.",  # noqa: E501
    ]
    return "\n".join(header + body) + "\n"


def write_outputs(
    result: CurationResult, out_dir: str | Path, config: GovernanceConfig, variant: str = "full"
) -> dict[str, Path]:
    """``out/curated/<lang>.parquet``, ``out/rejected.parquet``, ``out/README.md``,
    ``out/stats.json`` (atomic writes)."""
    out = Path(out_dir)
    paths = {}
    for lang, table in result.curated.items():
        paths[lang] = write_parquet_atomic(table, out / "curated" / f"{lang}.parquet")
    paths["rejected"] = write_parquet_atomic(result.rejected, out / "rejected.parquet")
    paths["card"] = _write_text(dataset_card(result, config, variant), out / "README.md")
    stats = [{"stage": r.stage, "lang": r.lang, **r.summary} for r in result.reports]
    paths["stats"] = _write_text(json.dumps(stats, indent=1, sort_keys=True), out / "stats.json")
    return paths
