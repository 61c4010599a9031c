"""What the report compares and how (one frozen dataclass shared by tables and verdicts)."""

from __future__ import annotations

from dataclasses import dataclass

from evaluation.calibration import N_BINS

__all__ = ["ReportSettings"]


@dataclass(frozen=True)
class ReportSettings:
    """The candidate and its baselines, the governance arm and protocol of the method tables,
    the margins of the equivalence and non-inferiority rules, and the statistics settings."""

    baseline: str = "lora"  # the reference of Table VI's ratios and the overhead claim
    candidate: str = "hybrid"  # the method the seed claims are about
    variant: str = "full"  # governance arm of the method tables
    ablation_method: str = "hybrid"
    confidence: float = 0.95
    n_boot: int = 1000
    ece_bins: int = N_BINS
    seed: int = 0
    pivot: str = "en"  # translation directions are en->xx and xx->en
    extra_candidates: tuple[str, ...] = ("hybrid_unitary",)  # also get verdicts, when run
    # every claim is tested against the strongest of these that was run
    baselines: tuple[str, ...] = ("lexical", "untuned", "lora", "lora_ga", "boft", "oft", "full")
    protocol: str = "zero_shot"  # the headline protocol (train on English only)
    target_effect: float = 0.03  # power is printed at this accuracy difference
    parity_margin: float = 0.05  # non-inferiority margin: worst language and gap
    additivity_margin: float = 0.03  # TOST margin of the governance interaction
    temperature_strength: float = float("inf")  # inf: one pooled temperature; else shrinkage
    max_step_time_ratio: float = 1.15  # "modest overhead", against the baseline
    max_memory_ratio: float = 1.10
