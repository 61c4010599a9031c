"""Metrics on hand-computable cases, parity, translation scores, robustness rows, footprint,
the Pareto front, and the frontier and bar plots written as valid PNGs."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from evaluation.metrics import (
    accuracy,
    bleu_tokenizer,
    classification_scores,
    directional_balance,
    footprint,
    macro_f1,
    parity,
    per_direction_translation,
    per_language_classification,
    robustness_rows,
    sentence_chrf,
    translation_scores,
)
from evaluation.plots import pareto_front, plot_bars, plot_frontier
from evaluation.stats import Estimate

# --------------------------------------------------------------------------- classification


def test_accuracy_and_macro_f1_by_hand():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    assert accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    # class 0: P=1/2 R=1/2 F=1/2; class 1: P=2/3 R=1 F=4/5; class 2: never predicted, F=0
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_skips_classes_absent_on_both_sides_and_respects_labels():
    y_true = [0, 0, 1, 1]
    y_pred = [0, 0, 1, -1]  # -1: the model's answer could not be parsed
    # label 2 of the task never occurs in this language: it must not count as a zero
    f_all = macro_f1(y_true, y_pred, labels=[0, 1, 2])
    assert f_all == pytest.approx((1.0 + 2 / 3) / 2)  # class 1: P=1 R=1/2 F=2/3
    # without labels, -1 becomes a class of its own with F1 0
    assert macro_f1(y_true, y_pred) == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_per_language_groups_examples():
    langs = ["de", "en", "de", "en", "de"]
    scores = per_language_classification(langs, [1, 0, 1, 1, 0], [1, 0, 0, 1, 0])
    assert list(scores) == ["de", "en"]
    assert scores["de"].n == 3 and scores["de"].accuracy == pytest.approx(2 / 3)
    assert scores["en"].accuracy == 1.0 and scores["en"].macro_f1 == 1.0
    assert classification_scores([1, 0], [1, 1]).accuracy == 0.5


def test_parity_worst_gap_and_std():
    scores = {"en": 0.9, "de": 0.8, "ru": 0.6}
    p = parity(scores)
    mean = (0.9 + 0.8 + 0.6) / 3
    std = math.sqrt(((0.9 - mean) ** 2 + (0.8 - mean) ** 2 + (0.6 - mean) ** 2) / 3)
    assert (p.worst_lang, p.best_lang) == ("ru", "en")
    assert p.gap == pytest.approx(0.3) and p.std == pytest.approx(std)
    assert p.mean == pytest.approx(mean) and p.n_langs == 3
    # for a loss (ECE) the worst language is the highest one
    e = parity({"en": 0.02, "de": 0.05, "ru": 0.20}, higher_is_better=False)
    assert e.worst_lang == "ru" and e.worst == 0.20 and e.gap == pytest.approx(0.18)


def test_classification_bad_input_is_explained():
    with pytest.raises(ValueError, match="y_pred has 2"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        macro_f1([], [])
    with pytest.raises(ValueError, match="language tags"):
        per_language_classification(["en"], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="at least one language"):
        parity({})
    with pytest.raises(ValueError, match="non-finite"):
        parity({"en": float("nan")})


# --------------------------------------------------------------------------- translation


def test_bleu_brevity_penalty_by_hand_and_perfect_chrf():
    ref = "the quick brown fox jumps over the dog"
    perfect = translation_scores([ref], [ref])
    assert perfect.bleu == pytest.approx(100.0) and perfect.chrf_pp == pytest.approx(100.0)
    # a 4-word prefix: every n-gram precision is 1, brevity penalty exp(1 - 8/4)
    short = translation_scores(["the quick brown fox"], [ref])
    assert short.bleu == pytest.approx(100 * math.exp(1 - 8 / 4), abs=1e-6)
    assert "nw:2" in short.chrf_signature  # chrF++: word bigrams on top of chrF
    worse = translation_scores(["a slow red cat sleeps under the bed"], [ref])
    assert worse.chrf_pp < short.chrf_pp < perfect.chrf_pp


def test_unsegmented_languages_get_their_bleu_tokenizer():
    assert bleu_tokenizer("zh") == "zh" and bleu_tokenizer("ja") == "char"
    assert bleu_tokenizer("de") == "13a" and bleu_tokenizer("zh-Hans") == "zh"
    ref = "爱因斯坦的广义相对论描绘了一幅壮丽的引力图景"
    hyp = "爱因斯坦的狭义相对论描绘了一幅壮丽的图景"
    zh = translation_scores([hyp], [ref], target_lang="zh")
    as_words = translation_scores([hyp], [ref], target_lang="en")
    assert as_words.bleu == 0.0  # 13a sees one "word" per sentence
    assert zh.bleu > 20.0


def test_directions_and_balance():
    src = ["en", "en", "de", "de", "en"]
    tgt = ["de", "de", "en", "en", "ru"]
    hyps = ["das ist gut", "ein Haus", "this is good", "a house", "дом"]
    refs = ["das ist gut", "ein Haus", "this is fine", "the house", "дом"]
    scores = per_direction_translation(src, tgt, hyps, refs)
    assert set(scores) == {("en", "de"), ("de", "en"), ("en", "ru")}
    assert scores[("en", "de")].n == 2 and scores[("en", "de")].chrf_pp == pytest.approx(100.0)
    bal = directional_balance(scores)
    assert list(bal) == ["de"]  # ru has only one direction
    b = bal["de"]
    assert b.out_of_pivot == pytest.approx(100.0) and b.into_pivot < 100.0
    assert b.difference == pytest.approx(b.out_of_pivot - b.into_pivot)
    per_sentence = sentence_chrf(hyps, refs)
    assert per_sentence.shape == (5,) and per_sentence[0] == pytest.approx(100.0)


def test_translation_bad_input_is_explained():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        translation_scores(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of sentences"):
        translation_scores("a b", "a b")
    with pytest.raises(TypeError, match="hypothesis 1 is NoneType"):
        sentence_chrf(["a", None], ["a", "b"])
    with pytest.raises(ValueError, match="metric"):
        directional_balance({}, metric="ter")


# --------------------------------------------------------------------------- robustness, cost


def test_robustness_rows_delta_against_clean():
    clean = {"de": {"accuracy": 0.8, "ece": 0.05}}
    rows = robustness_rows(clean, {("de", "typos", 0.5): {"accuracy": 0.6, "ece": 0.12}})
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["accuracy"]["delta"] == pytest.approx(-0.2)
    assert by_metric["ece"]["delta"] == pytest.approx(0.07)
    with pytest.raises(KeyError, match="no clean scores for language 'ru'"):
        robustness_rows(clean, {("ru", "typos", 0.5): {"accuracy": 0.5}})


def test_footprint_excludes_warmup_from_rates():
    f = footprint(
        [5.0, 1.0, 2.0, 1.0],
        100,
        trainable_params=10,
        total_params=1000,
        peak_memory_bytes=2**30,
        warmup_steps=1,
    )
    assert f.seconds_per_step == 1.0 and f.seconds_per_step_mean == pytest.approx(4 / 3)
    assert f.tokens_per_second == pytest.approx(300 / 4) and f.total_seconds == 9.0
    assert f.trainable_fraction == pytest.approx(0.01)
    with pytest.raises(ValueError, match="positive and finite"):
        footprint([1.0, -1.0], 10, 1, 10)
    with pytest.raises(ValueError, match="trainable_params"):
        footprint([1.0], 10, 20, 10)


# --------------------------------------------------------------------------- frontier, plots


def test_pareto_front_by_hand():
    # (cost, quality): lower cost and higher quality are better
    pts = [(1.0, 0.5), (2.0, 0.7), (2.5, 0.6), (3.0, 0.7), (4.0, 0.9), (0.5, 0.4), (2.0, 0.7)]
    # (2.5, .6) is dominated by (2, .7); (3, .7) too; the two (2, .7) tie and both stay
    assert pareto_front(pts) == [5, 0, 1, 6, 4]
    assert pareto_front([]) == []
    with pytest.raises(ValueError, match="pairs"):
        pareto_front([(1, 2, 3)])


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.std(img)) > 0.01  # something was drawn


def test_frontier_and_bars_write_valid_pngs(tmp_path):
    est = Estimate(mean=0.7, low=0.65, high=0.75, confidence=0.95, n_seeds=3, n_examples=100)
    p = plot_frontier(
        {"lora": (1.0, 0.6), "boft": (2.2, (0.65, 0.6, 0.7)), "hybrid": (1.5, est)},
        tmp_path / "sub" / "frontier.png",
    )
    _assert_png(p)
    b = plot_bars(
        {"de": {"lora": est, "hybrid": 0.8}, "ru": {"lora": (0.5, 0.4, 0.6)}}, tmp_path / "bars.png"
    )
    _assert_png(b)
    _assert_png(plot_bars({"lora": 0.6, "hybrid": est}, tmp_path / "flat.png"))
    assert not list(tmp_path.glob("**/*.tmp"))
    with pytest.raises(ValueError, match="PNG"):
        plot_bars({"a": 1.0}, tmp_path / "bars.svg")
    with pytest.raises(ValueError, match="expected \\(cost, quality\\)"):
        plot_frontier({"lora": 1.0}, tmp_path / "f.png")


def test_bar_labels_of_the_governance_arms_do_not_overlap(tmp_path, monkeypatch):
    import evaluation.plots as plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    arms = ["full", "no_lid", "no_dedup", "no_quality", "none", "rehydrate"]
    plot_bars({a: (0.3, 0.2, 0.4) for a in arms}, tmp_path / "arms.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == arms
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 <= right.x0 or left.y0 >= right.y1 or left.y1 <= right.y0, (left, right)
