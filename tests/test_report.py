"""Report tables, verdicts and writer on synthetic predictions whose truth is known by
construction: each run of a method is correct on an exact share of the items of every language
(which items depends on the method, seed and language), with logits of a chosen margin, so the
confidence (and hence calibration) is known too."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from evaluation.calibration import fit_temperature
from evaluation.metrics import translation_scores
from evaluation.report import (
    TABLE_TITLES,
    ReportSettings,
    build_report,
    figure_cost_quality_frontier,
    format_for_markdown,
    governance_additivity,
    is_note_table,
    main,
    markdown_table,
    table_accuracy_parity,
    table_footprint,
    table_orthographic_robustness,
    table_translation,
    table_translation_calibration,
    verdicts,
    write_report,
)
from evaluation.store import load_bundle, write_bundle

LANGS = ("fr", "ru", "sw")
N = 20  # items per language; ids repeat across languages, so examples are (lang, item_id)
SEEDS = (0, 1, 2)
S = ReportSettings(n_boot=200)


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def cls_rows(
    method: str,
    acc: float | dict[str, float],
    *,
    variant: str = "full",
    seeds: tuple[int, ...] = SEEDS,
    split: str = "test",
    margin: float = 5.0,
    key: str | None = None,
    perturbation: str = "clean",
    severity: float = 0.0,
    langs: tuple[str, ...] = LANGS,
    n: int = N,
) -> list[dict]:
    """Rows of one method: in each (seed, language) exactly round(acc * n) items are right.
    Runs with the same ``key`` are right on the same items."""
    rows = []
    for seed in seeds:
        for lang in langs:
            a = acc[lang] if isinstance(acc, dict) else acc
            rng = _rng(key or method, variant, seed, split, perturbation, severity, lang)
            correct = np.zeros(n, bool)
            correct[rng.permutation(n)[: round(a * n)]] = True
            for i in range(n):
                gold = i % 3
                z = [0.0, 0.0, 0.0]
                z[gold if correct[i] else (gold + 1) % 3] = margin
                rows.append(
                    {
                        "variant": variant,
                        "run_key": f"{method}-s{seed}",
                        "method": method,
                        "seed": seed,
                        "split": split,
                        "lang": lang,
                        "item_id": f"q{i}",
                        "perturbation": perturbation,
                        "severity": severity,
                        "gold": gold,
                        "logits": z,
                    }
                )
    return rows


def frame(*parts: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for p in parts for r in p])


def correct(df: pd.DataFrame) -> np.ndarray:
    return np.array([np.argmax(z) for z in df["logits"]]) == df["gold"].to_numpy()


def footprint_rows(spec: dict[str, tuple[float, float]], variant: str = "full") -> list[dict]:
    """method -> (step seconds, peak RSS MB); three runs each, step time 0.9x/1.0x/1.1x."""
    rows = []
    for method, (step, rss) in spec.items():
        for seed, f in zip(SEEDS, (0.9, 1.0, 1.1), strict=True):
            rows.append(
                {
                    "variant": variant,
                    "run_key": f"{method}-s{seed}",
                    "method": method,
                    "seed": seed,
                    "task": "classification",
                    "steps_run": 100,
                    "train_wall_s": 100 * step * f,
                    "step_time_s_mean": step * f,
                    "tokens_per_s": 1000 / (step * f),
                    "peak_rss_mb": rss,
                    "trainable_params": 1000 if method == "lora" else 1500,
                    "total_params": 1_000_000,
                    "trainable_pct": 0.1,
                    "setup_s": 2.0,
                }
            )
    return rows


@pytest.fixture(scope="module")
def basic() -> pd.DataFrame:
    """lora 50%, hybrid 80%, boft identical to lora (same items right)."""
    return frame(
        cls_rows("lora", 0.5),
        cls_rows("hybrid", 0.8),
        cls_rows("boft", 0.5, key="lora"),
    )


# --------------------------------------------------------------------------- Table II


def test_accuracy_table_equals_direct_computation(basic):
    t = table_accuracy_parity(basic, S).set_index("method")
    for method in ("lora", "hybrid", "boft"):
        rows = basic[basic["method"] == method]
        ok = correct(rows)
        row = t.loc[method]
        assert row["accuracy"] == pytest.approx(ok.mean())
        assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
        per_lang = {lang: ok[(rows["lang"] == lang).to_numpy()].mean() for lang in LANGS}
        for lang, v in per_lang.items():
            assert row[f"acc_{lang}"] == pytest.approx(v)
        assert row["gap"] == pytest.approx(max(per_lang.values()) - min(per_lang.values()))
        assert row["worst_acc"] == pytest.approx(min(per_lang.values()))
        f1 = [
            f1_score(
                g["gold"],
                [int(np.argmax(z)) for z in g["logits"]],
                average="macro",
                labels=[0, 1, 2],
            )
            for _, g in rows.groupby("run_key")
        ]
        assert row["macro_f1"] == pytest.approx(np.mean(f1))
        assert row["n_seeds"] == 3 and row["n_items"] == 3 * N
    assert t.loc["hybrid", "accuracy"] == pytest.approx(0.8)


def test_accuracy_table_compares_with_the_strongest_baseline(basic):
    df = pd.concat([basic, frame(cls_rows("lexical", 0.6, seeds=(0,)))], ignore_index=True)
    t = table_accuracy_parity(df, S).set_index("method")
    assert t.loc["hybrid", "vs"] == "lexical"  # 0.6 beats lora's 0.5: the strongest
    assert t.loc["hybrid", "diff_vs"] == pytest.approx(0.2)
    assert t.loc["hybrid", "diff_vs_low"] > 0 and t.loc["hybrid", "mde"] > 0
    assert 0 < t.loc["hybrid", "power"] <= 1
    assert pd.isna(t.loc["lexical", "diff_vs"])  # the reference itself


def test_overlap_controlled_accuracy_uses_only_flagged_non_english_items(basic):
    df = basic.copy()
    df["overlap_controlled"] = df["item_id"].isin([f"q{i}" for i in range(10)])
    t = table_accuracy_parity(df, S).set_index("method")
    rows = df[(df["method"] == "hybrid") & df["overlap_controlled"]]
    assert t.loc["hybrid", "accuracy_oc"] == pytest.approx(correct(rows).mean())
    assert t.loc["hybrid", "n_items_oc"] == 10 * len(LANGS)


def test_pooled_temperature_lowers_test_nll_of_overconfident_logits():
    df = frame(
        cls_rows("hybrid", 0.6, margin=8.0),
        cls_rows("hybrid", 0.6, margin=8.0, split="dev", key="dev"),
    )
    t = table_translation_calibration(df, None, S).set_index("method")
    row = t.loc["hybrid"]
    dev = df[df["split"] == "dev"]
    z = np.vstack(dev[dev["run_key"] == "hybrid-s0"]["logits"].to_list())
    assert row["temperature"] == pytest.approx(
        np.mean([fit_temperature(np.vstack(g["logits"].to_list()), g["gold"].to_numpy())
                 for _, g in dev.groupby("run_key")]), rel=1e-6)  # fmt: skip
    assert z.shape[0] == len(LANGS) * N
    assert row["dce_after"] < row["dce_before"] and row["ece_after"] < row["ece_before"]
    assert row["dce_before_low"] <= row["dce_before"] <= row["dce_before_high"]
    assert row["nll_before"] > 1.0  # confident mistakes


def test_translation_table_equals_sacrebleu_and_carries_paired_p_values():
    refs = [f"the cat number {i} sat on the mat" for i in range(30)]
    rows = []
    for method, hyp in (("lora", lambda r: r[:10]), ("hybrid", lambda r: r)):
        for i, r in enumerate(refs):
            rows.append(
                {
                    "variant": "full",
                    "run_key": f"mt-{method}-s0",
                    "method": method,
                    "seed": 0,
                    "src_lang": "de",
                    "tgt_lang": "en",
                    "item_id": f"m{i}",
                    "source": "x",
                    "reference": r,
                    "hypothesis": hyp(r),
                }
            )
    mt = pd.DataFrame(rows)
    t = table_translation(mt, S).set_index("method")
    direct = translation_scores([r[:10] for r in refs], refs, "en")
    assert t.loc["lora", "chrf"] == pytest.approx(direct.chrf_pp)
    assert t.loc["hybrid", "vs"] == "lora" and t.loc["hybrid", "p_value"] < 0.05
    assert t.loc["lora", "chrf_low"] <= t.loc["lora", "chrf"] <= t.loc["lora", "chrf_high"]
    assert is_note_table(table_translation(None, S))


def test_robustness_flip_rate_counts_clean_correct_items_and_drops_no_op_copies(basic):
    pert = frame(cls_rows("hybrid", 0.5, perturbation="typos", severity=0.5))
    pert["corruption"] = 0.1
    noop = frame(cls_rows("hybrid", 0.8, key="hybrid", perturbation="case", severity=0.5))
    noop["corruption"] = 0.0  # the perturbation changed nothing: no cell
    df = pd.concat([basic, pert, noop], ignore_index=True)
    t = table_orthographic_robustness(df, S)
    assert set(t["perturbation"]) == {"typos"}
    row = t.set_index("method").loc["hybrid"]
    clean = df[(df["method"] == "hybrid") & (df["perturbation"] == "clean")]
    c = pd.Series(correct(clean), index=pd.MultiIndex.from_frame(clean[["run_key", "lang",
                  "item_id"]]))  # fmt: skip
    p = pd.Series(correct(pert), index=pd.MultiIndex.from_frame(pert[["run_key", "lang",
                  "item_id"]]))  # fmt: skip
    flips = ((c == 1) & (p.reindex(c.index) == 0)).sum() / (c == 1).sum()
    assert row["flip_rate"] == pytest.approx(flips)
    assert row["corruption"] == pytest.approx(0.1) and row["n_items"] == N * len(LANGS)


# --------------------------------------------------------------------------- Table V


def ablation(arms: dict[str, float], n: int = N) -> pd.DataFrame:
    """Arms of one method whose right items are nested (same key): exact accuracies."""
    return frame(*[cls_rows("hybrid", a, variant=v, key="abl", n=n) for v, a in arms.items()])


ADDITIVE = {"full": 0.8, "no_lid": 0.7, "no_dedup": 0.7, "no_quality": 0.7, "none": 0.5}


def test_governance_interaction_of_arms_that_add_up_and_do_not():
    big = ablation(ADDITIVE, n=400)
    adds = governance_additivity(big, ReportSettings(n_boot=200, additivity_margin=0.1))
    assert adds.verdict == "holds" and adds.estimate == pytest.approx(0.0)
    assert adds.extra["total"] == pytest.approx(0.3)
    over = governance_additivity(ablation(dict(ADDITIVE, none=0.1)), S)  # total 0.7 > sum 0.3
    assert over.verdict == "does not hold" and over.estimate == pytest.approx(0.4)
    missing = governance_additivity(ablation({"full": 0.8, "none": 0.5}), S)
    assert not missing.measured and "no_lid" in missing.evidence


def test_footprint_ratios_with_intervals_from_per_step_times():
    fp = pd.DataFrame(footprint_rows({"lora": (1.0, 1000.0), "hybrid": (1.8, 1100.0)}))
    rng = np.random.default_rng(0)
    fp["step_times"] = [list(r * rng.lognormal(0, 0.05, 40)) for r in fp["step_time_s_mean"]]
    t = table_footprint(fp, S).set_index("method")
    assert t.loc["hybrid", "step_time_ratio"] == pytest.approx(1.8, rel=0.03)
    assert t.loc["hybrid", "step_time_ratio_low"] < 1.8 < t.loc["hybrid", "step_time_ratio_high"]
    assert t.loc["hybrid", "peak_rss_ratio"] == pytest.approx(1.1)
    v = claim(verdicts(frame(cls_rows("lora", 0.5)), fp, S), "overhead")
    assert v.verdict == "does not hold" and "[" in v.evidence


def test_frontier_marks_the_pareto_optimal_methods(tmp_path, basic):
    df = pd.concat([basic, pd.DataFrame(cls_rows("oft", 0.6))], ignore_index=True)
    fp = pd.DataFrame(
        footprint_rows({"lora": (1.0, 1.0), "hybrid": (1.2, 1.0), "oft": (1.5, 1.0)})
        + footprint_rows({"boft": (0.5, 1.0)})
    )
    pts = figure_cost_quality_frontier(df, fp, S, tmp_path / "frontier.png").set_index("method")
    # boft: cheapest (0.5) at 0.5; lora: costlier, no more accurate -> dominated;
    # hybrid: 0.8 at 1.2; oft: 0.6 at 1.5 -> dominated by hybrid
    assert pts["on_front"].to_dict() == {"lora": False, "boft": True, "hybrid": True, "oft": False}
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "frontier_params.png").is_file()


# --------------------------------------------------------------------------- verdicts


def claim(vs, name):
    return next(v for v in vs if v.claim == name)


def test_accuracy_verdict_against_the_strongest_baseline():
    df = frame(cls_rows("lora", 0.5), cls_rows("oft", 0.8, key="hyb"), cls_rows("hybrid", 0.8,
               key="hyb"))  # fmt: skip
    v = claim(verdicts(df, None, S), "accuracy")
    assert v.baseline == "oft" and v.verdict in ("inconclusive", "does not hold")
    assert "MDE" in v.evidence and np.isfinite(v.mde)
    lead = claim(verdicts(frame(cls_rows("lora", 0.4), cls_rows("hybrid", 0.9)), None, S),
                 "accuracy")  # fmt: skip
    assert lead.verdict == "holds" and lead.baseline == "lora"
    missing = claim(verdicts(frame(cls_rows("hybrid", 0.5)), None, S), "accuracy")
    assert missing.label.startswith("inconclusive (not measured:")


def test_parity_verdict_does_not_hold_when_a_language_is_left_behind():
    df = frame(cls_rows("lora", 0.6), cls_rows("hybrid", {"fr": 0.9, "ru": 0.9, "sw": 0.1}))
    v = claim(verdicts(df, None, S), "parity")
    assert v.verdict == "does not hold" and "sw" in v.evidence


# --------------------------------------------------------------------------- writing


def test_markdown_cells_are_readable():
    df = pd.DataFrame(
        {
            "method": ["a|b", "c"],
            "accuracy": [0.5123, np.nan],
            "accuracy_low": [0.47, np.nan],
            "accuracy_high": [0.55, np.nan],
            "significant": [True, False],
            "n_items": [60.0, np.nan],
            "trainable_params": [1234567.0, 10.0],
        }
    )
    cells = format_for_markdown(df)
    assert list(cells.columns) == [
        "method",
        "accuracy",
        "significant",
        "n_items",
        "trainable_params",
    ]
    assert cells["accuracy"].tolist() == ["0.512 [0.470, 0.550]", "—"]
    assert cells["significant"].tolist() == ["yes", "no"]
    assert cells["n_items"].tolist() == ["60", "—"]
    assert cells["trainable_params"].tolist() == ["1,234,567", "10"]
    assert cells["method"].iloc[0] == "a\\|b"


def test_markdown_without_tabulate_falls_back_to_a_pipe_table(monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("tabulate")

    monkeypatch.setattr(pd.DataFrame, "to_markdown", missing)
    text = markdown_table(pd.DataFrame({"method": ["a", "b"], "accuracy": [0.5, 0.25]}))
    assert text.splitlines() == [
        "| method | accuracy |",
        "|---|---|",
        "| a | 0.500 |",
        "| b | 0.250 |",
    ]


def test_build_report_writes_every_table_and_the_verdicts(tmp_path, basic):
    df = pd.concat(
        [
            basic,
            frame(cls_rows("lora", 0.5, split="dev"), cls_rows("hybrid", 0.8, split="dev")),
            frame(cls_rows("hybrid", 0.5, perturbation="typos", severity=0.5, seeds=(0,), n=5)),
            frame(cls_rows("lora", 0.2, perturbation="typos", severity=0.5, seeds=(0,), n=5)),
            ablation({k: v for k, v in ADDITIVE.items() if k != "full"}),
        ],
        ignore_index=True,
    )
    fp = pd.DataFrame(footprint_rows({"lora": (1.0, 1000.0), "hybrid": (1.1, 1050.0)}))
    header = {"experiment": "synthetic", "config": {"langs": list(LANGS)}, "date": "2025-01-01"}
    rep = build_report(df, None, fp, S, tmp_path / "out", header)
    out = tmp_path / "out"
    for name in TABLE_TITLES:
        if name == "accuracy_parity_translate_train":
            continue
        for ext in ("md", "csv", "png"):
            assert (out / f"{name}.{ext}").is_file(), (name, ext)
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert len(pd.read_csv(out / f"{name}.csv")) == len(rep.tables[name])
    text = rep.report_path.read_text()
    assert text.startswith("# Evaluation report: synthetic") and "2025-01-01" in text
    assert all(t in text for k, t in TABLE_TITLES.items() if not k.endswith("translate_train"))
    verdict_part = text.split("## Verdicts", 1)[1]
    assert all(v.statement in verdict_part for v in rep.verdicts) and len(rep.verdicts) == 6
    assert "MDE" in verdict_part and (out / "reliability.png").is_file()
    assert "no translation runs" in text
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    acc = rep.tables["accuracy_parity"].set_index("method")["accuracy"]
    assert acc["hybrid"] == pytest.approx(0.8)
    # the committed bundle rebuilds the same report without Dagster
    bundle = write_bundle(tmp_path / "bundle", df, None, fp, {"header": header})
    cls2, _, fp2, meta = load_bundle(bundle)
    assert len(cls2) == len(df) and meta["header"]["experiment"] == "synthetic"
    assert (
        main([str(bundle), "--out", str(tmp_path / "again"), "--settings", '{"n_boot": 200}']) == 0
    )
    again = pd.read_csv(tmp_path / "again" / "accuracy_parity.csv").set_index("method")
    assert again.loc["hybrid", "accuracy"] == pytest.approx(0.8)
    summary = json.loads((tmp_path / "again" / "report.json").read_text())  # as the asset's
    assert summary["experiment"] == "synthetic" and summary["runs"]
    assert {v["claim"] for v in summary["verdicts"]} == {v.claim for v in rep.verdicts}


def test_empty_inputs_give_note_tables_and_a_report(tmp_path):
    rep = build_report(pd.DataFrame(), pd.DataFrame(), None, S, tmp_path)
    assert all(is_note_table(t) for t in rep.tables.values())
    assert all(v.verdict == "inconclusive" and not v.measured for v in rep.verdicts)
    assert "not measured" in rep.report_path.read_text()
    paths = write_report(tmp_path / "w", {"custom": pd.DataFrame({"x": ["a"], "y": [1.0]})}, {}, [])
    assert paths["custom.png"].read_bytes()[:4] == b"\x89PNG"
    assert "No claims were assessed." in paths["report"].read_text()
