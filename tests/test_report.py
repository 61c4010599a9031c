"""Report tables, verdicts and writer on synthetic predictions whose truth is known by
construction: each run of a method is correct on an exact share of the items of every language
(which items depends on the method, seed and language), with logits of a chosen margin, so the
confidence (and hence calibration) is known too."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from evaluation.calibration import calibration_metrics, fit_temperature, softmax_probs
from evaluation.metrics import translation_scores
from evaluation.report import (
    TABLE_TITLES,
    ReportSettings,
    build_report,
    figure_cost_quality_frontier,
    format_for_markdown,
    governance_additivity,
    is_note_table,
    markdown_table,
    table_accuracy_parity,
    table_footprint,
    table_governance_ablation,
    table_orthographic_robustness,
    table_translation_calibration,
    verdicts,
    write_report,
)

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


def test_accuracy_table_flags_a_large_difference_and_not_identical_methods(basic):
    t = table_accuracy_parity(basic, S).set_index("method")
    assert t.loc["hybrid", "diff_vs_baseline"] == pytest.approx(0.3)
    assert bool(t.loc["hybrid", "significant"])
    assert t.loc["hybrid", "diff_vs_baseline_low"] > 0
    assert t.loc["boft", "diff_vs_baseline"] == 0
    assert not bool(t.loc["boft", "significant"])
    assert t.loc["boft", "n_langs_better"] == 0 and t.loc["boft", "n_langs_worse"] == 0
    assert not bool(t.loc["lora", "significant"])  # the baseline is not compared with itself


def test_accuracy_table_per_language_counts_a_language_gap():
    df = frame(cls_rows("lora", 0.5), cls_rows("hybrid", {"fr": 0.95, "ru": 0.5, "sw": 0.5}))
    t = table_accuracy_parity(df, S).set_index("method")
    assert t.loc["hybrid", "n_langs_better"] == 1
    assert t.loc["hybrid", "worst_lang"] in ("ru", "sw")


# --------------------------------------------------------------------------- Table III


def test_temperature_scaling_on_dev_lowers_test_nll_of_overconfident_logits():
    # 70% right with confidence ~0.995: over-confident; dev is drawn the same way
    df = frame(
        cls_rows("lora", 0.7, margin=6.0),
        cls_rows("lora", 0.7, margin=6.0, split="dev"),
    )
    t = table_translation_calibration(df, None, S).set_index("method")
    row = t.loc["lora"]
    assert row["nll_after"] < row["nll_before"]
    assert row["ece_after"] < row["ece_before"]
    assert row["temperature"] > 1
    # before: the pooled test metrics of each run, averaged; temperature: fitted per language
    before, temps = [], []
    for run, g in df[df["split"] == "test"].groupby("run_key"):
        probs = softmax_probs(np.vstack(g["logits"].to_list()))
        before.append(calibration_metrics(probs, g["gold"].to_numpy()).ece)
        for lang in LANGS:
            d = df[(df["split"] == "dev") & (df["run_key"] == run) & (df["lang"] == lang)]
            temps.append(fit_temperature(np.vstack(d["logits"].to_list()), d["gold"].to_numpy()))
    assert row["ece_before"] == pytest.approx(np.mean(before))
    assert row["temperature"] == pytest.approx(np.mean(temps))
    assert "no translation runs" in t.attrs["notes"]


def test_translation_columns_equal_direct_scores_and_are_missing_without_runs(basic):
    refs = ["the cat sat on the mat", "a dog runs in the park"]
    hyps = {0: ["the cat sat on a mat", "a dog ran in the park"], 1: refs}
    rows = []
    for seed, hs in hyps.items():
        for src, tgt in (("en", "fr"), ("fr", "en"), ("en", "ru")):
            for i, (h, r) in enumerate(zip(hs, refs, strict=True)):
                rows.append(
                    dict(
                        variant="full",
                        run_key=f"hybrid-s{seed}",
                        method="hybrid",
                        seed=seed,
                        src_lang=src,
                        tgt_lang=tgt,
                        item_id=str(i),
                        source="x",
                        reference=r if tgt != "en" else r.upper(),
                        hypothesis=h,
                    )
                )
    mt = pd.DataFrame(rows)
    t = table_translation_calibration(basic, mt, S).set_index("method")
    out, into, bal = [], [], []
    for hs in hyps.values():
        fr = translation_scores(hs, refs, "fr").chrf_pp
        ru = translation_scores(hs, refs, "ru").chrf_pp
        en = translation_scores(hs, [r.upper() for r in refs], "en").chrf_pp
        out.append((fr + ru) / 2)
        into.append(en)
        bal.append(fr - en)
    assert t.loc["hybrid", "chrf_en_xx"] == pytest.approx(np.mean(out))
    assert t.loc["hybrid", "chrf_xx_en"] == pytest.approx(np.mean(into))
    assert t.loc["hybrid", "chrf_balance"] == pytest.approx(np.mean(bal))
    assert t.loc["hybrid", "n_mt_seeds"] == 2
    assert np.isnan(t.loc["lora", "chrf_en_xx"]) and np.isnan(t.loc["lora", "bleu_xx_en"])
    assert "—" in markdown_table(t.reset_index())


# --------------------------------------------------------------------------- Table IV


def test_robustness_drop_is_clean_minus_perturbed_on_the_same_items(basic):
    sub = {"seeds": (0,), "langs": ("fr", "ru"), "n": 10}
    pert = frame(
        cls_rows("lora", 0.2, perturbation="typos", severity=0.5, **sub),
        cls_rows("hybrid", 0.6, perturbation="typos", severity=0.5, **sub),
        cls_rows("hybrid", 0.3, perturbation="typos", severity=1.0, **sub),
    )
    df = pd.concat([basic, pert], ignore_index=True)
    t = table_orthographic_robustness(df, S)
    long = table_orthographic_robustness(df, S, by_language=True)
    assert len(t) == 3
    for _, row in t.iterrows():
        p = pert[
            (pert["method"] == row["method"])
            & (pert["perturbation"] == row["perturbation"])
            & (pert["severity"] == row["severity"])
        ]
        c = basic[
            (basic["run_key"] == f"{row['method']}-s0")
            & basic["lang"].isin(["fr", "ru"])
            & basic["item_id"].isin([f"q{i}" for i in range(10)])
        ]
        assert row["n_seeds"] == 1 and row["n_items"] == 20
        assert row["accuracy"] == pytest.approx(correct(p).mean())
        assert row["clean_accuracy"] == pytest.approx(correct(c).mean())
        assert row["drop"] == pytest.approx(correct(c).mean() - correct(p).mean())
        assert row["drop_low"] <= row["drop"] <= row["drop_high"]
        per = long[
            (long["method"] == row["method"]) & (long["severity"] == row["severity"])
        ].set_index("lang")
        for lang in ("fr", "ru"):
            drop = correct(c[c["lang"] == lang]).mean() - correct(p[p["lang"] == lang]).mean()
            assert per.loc[lang, "drop"] == pytest.approx(drop)


# --------------------------------------------------------------------------- Table V


def ablation(arms: dict[str, float]) -> pd.DataFrame:
    return frame(*[cls_rows("hybrid", a, variant=v) for v, a in arms.items()])


ADDITIVE = {"full": 0.8, "no_lid": 0.7, "no_dedup": 0.7, "no_quality": 0.7, "none": 0.5}


def test_governance_gains_that_add_up():
    df = ablation({**ADDITIVE, "rehydrate": 0.8})
    add = governance_additivity(df, S)
    assert add.status == "add up"
    assert add.total_gain.diff == pytest.approx(0.3)
    assert {k: g.diff for k, g in add.gains.items()} == pytest.approx(
        {"lid": 0.1, "dedup": 0.1, "quality": 0.1}
    )
    assert "the gains add up" in add.sentence and "rehydrate vs full" in add.sentence
    t = table_governance_ablation(df, S).set_index("variant")
    assert list(t.index) == ["full", "no_lid", "no_dedup", "no_quality", "none", "rehydrate"]
    assert t.loc["none", "diff_vs_full"] == pytest.approx(-0.3)
    assert bool(t.loc["none", "significant"]) and not bool(t.loc["rehydrate", "significant"])
    assert add.sentence in t.attrs["notes"]


def test_governance_gains_that_do_not_add_up():
    add = governance_additivity(ablation({**ADDITIVE, "none": 0.75}), S)
    assert add.status == "do not add up"
    assert add.sum_of_gains == pytest.approx(0.3)
    assert add.sum_of_gains > add.total_gain.high
    assert "do not add up" in add.sentence


def test_governance_additivity_with_missing_arms_names_them():
    arms = {k: v for k, v in ADDITIVE.items() if k != "no_dedup"}
    add = governance_additivity(ablation(arms), S)
    assert add.status == "inconclusive" and add.missing == ("no_dedup",)
    assert "no_dedup" in add.sentence
    assert len(table_governance_ablation(ablation(arms), S)) == 4


def test_governance_additivity_is_inconclusive_when_the_total_is_not_told_from_zero():
    arms = {"full": 0.6, "no_lid": 0.6, "no_dedup": 0.6, "no_quality": 0.55, "none": 0.55}
    add = governance_additivity(ablation(arms), S)
    assert add.total_gain.low <= add.sum_of_gains <= add.total_gain.high
    assert add.total_gain.low < 0 < add.total_gain.high
    assert add.status == "inconclusive" and "too wide" in add.sentence


# --------------------------------------------------------------------------- Table VI, frontier


def test_footprint_means_and_ratios_to_the_baseline():
    fp = pd.DataFrame(
        footprint_rows({"lora": (1.0, 1000.0), "hybrid": (1.1, 1050.0)})
        + footprint_rows({"hybrid": (9.0, 9000.0)}, variant="none")  # other arm: ignored
    )
    t = table_footprint(fp, S).set_index("method")
    assert list(t.index) == ["lora", "hybrid"]
    assert t.loc["hybrid", "step_time_s_mean"] == pytest.approx(1.1)
    assert t.loc["hybrid", "step_time_ratio"] == pytest.approx(1.1)
    assert t.loc["hybrid", "peak_rss_ratio"] == pytest.approx(1.05)
    assert t.loc["hybrid", "tokens_per_s_ratio"] == pytest.approx(
        np.mean([1000 / (1.1 * f) for f in (0.9, 1.0, 1.1)])
        / np.mean([1000 / f for f in (0.9, 1.0, 1.1)])
    )
    assert t.loc["hybrid", "trainable_params_ratio"] == pytest.approx(1.5)
    assert t.loc["lora", "n_runs"] == 3
    assert is_note_table(table_footprint(fp.assign(task="translation"), S))


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


def test_accuracy_verdict_reaches_each_outcome():
    better = frame(cls_rows("lora", 0.5), cls_rows("hybrid", 0.85))
    worse = frame(cls_rows("lora", 0.8), cls_rows("hybrid", 0.4))
    close = frame(cls_rows("lora", 0.5), cls_rows("hybrid", {"fr": 0.55, "ru": 0.5, "sw": 0.5}))
    assert claim(verdicts(better, None, S), "accuracy").verdict == "holds"
    assert claim(verdicts(worse, None, S), "accuracy").verdict == "does not hold"
    v = claim(verdicts(close, None, S), "accuracy")
    assert v.verdict == "inconclusive" and v.measured
    assert "lora_ga" in v.evidence  # baselines not run are named
    missing = claim(verdicts(frame(cls_rows("lora", 0.5)), None, S), "accuracy")
    assert missing.label.startswith("inconclusive (not measured:")


def test_calibration_parity_robustness_and_overhead_verdicts():
    # one seed per arm: the pairing is then exact; both arms right on the same 60% of items,
    # hybrid with confidence 0.6 (calibrated: margin ln 3), lora with ~0.99 (over-confident)
    one = {"seeds": (0,), "key": "lora"}
    calibrated = float(np.log(3.0))
    df = frame(
        cls_rows("lora", 0.6, margin=6.0, **one),
        cls_rows("hybrid", 0.6, margin=calibrated, **one),
        # robustness: hybrid keeps its accuracy on perturbed items, lora gets them all wrong
        cls_rows("hybrid", 0.6, margin=calibrated, perturbation="case", severity=1.0, **one),
        cls_rows("lora", 0.0, perturbation="case", severity=1.0, **one),
    )
    fp = pd.DataFrame(footprint_rows({"lora": (1.0, 1000.0), "hybrid": (1.1, 1050.0)}))
    vs = verdicts(df, fp, S)
    assert [v.claim for v in vs] == [
        "accuracy",
        "calibration",
        "parity",
        "robustness",
        "governance",
        "overhead",
    ]
    assert claim(vs, "calibration").verdict == "holds"
    assert claim(vs, "parity").verdict == "holds"
    assert claim(vs, "robustness").verdict == "holds"
    assert claim(vs, "overhead").verdict == "holds"
    assert claim(vs, "governance").label.startswith("inconclusive (not measured:")
    slow = pd.DataFrame(footprint_rows({"lora": (1.0, 1000.0), "hybrid": (1.3, 1000.0)}))
    assert claim(verdicts(df, slow, S), "overhead").verdict == "does not hold"
    # swap the margins: now hybrid is the over-confident one
    swapped = frame(
        cls_rows("lora", 0.6, margin=calibrated, **one),
        cls_rows("hybrid", 0.6, margin=6.0, **one),
    )
    assert claim(verdicts(swapped, None, S), "calibration").verdict == "does not hold"


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
        for ext in ("md", "csv", "png"):
            assert (out / f"{name}.{ext}").is_file(), (name, ext)
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert len(pd.read_csv(out / f"{name}.csv")) == len(rep.tables[name])
    text = rep.report_path.read_text()
    assert text.startswith("# Evaluation report: synthetic") and "2025-01-01" in text
    assert all(title in text for title in TABLE_TITLES.values())
    verdict_part = text.split("## Verdicts", 1)[1]
    assert all(v.statement in verdict_part for v in rep.verdicts) and len(rep.verdicts) == 6
    assert "no translation runs" in text
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    acc = rep.tables["accuracy_parity"].set_index("method")["accuracy"]
    assert acc["hybrid"] == pytest.approx(0.8)


def test_empty_inputs_give_note_tables_and_a_report(tmp_path):
    rep = build_report(pd.DataFrame(), pd.DataFrame(), None, S, tmp_path)
    assert all(is_note_table(t) for t in rep.tables.values())
    assert all(v.verdict == "inconclusive" and not v.measured for v in rep.verdicts)
    assert "not measured" in rep.report_path.read_text()
    paths = write_report(tmp_path / "w", {"custom": pd.DataFrame({"x": ["a"], "y": [1.0]})}, {}, [])
    assert paths["custom.png"].read_bytes()[:4] == b"\x89PNG"
    assert "No claims were assessed." in paths["report"].read_text()
