"""Perturbations: deterministic for a seed, nested across severities, and script-safe on the
real running text that ``dataset_build`` ships (Cyrillic, Greek, Arabic, Devanagari...)."""

from __future__ import annotations

import difflib
import unicodedata

import matplotlib.image as mpimg
import numpy as np
import pytest
import regex
from anyascii import anyascii

from evaluation.perturb import HOMOGLYPHS, PERTURBATIONS, SEVERITIES, perturb, perturb_batch
from evaluation.plots import plot_robustness
from quality_models.shipped_text import running_text

SCRIPTS = {"ru": "Cyrillic", "el": "Greek", "ar": "Arabic", "hi": "Devanagari"}
ALL_LANGS = ["fr", "vi", "de", "ru", "el", "ar", "hi", "he", "ko", "zh"]


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    """A few paragraphs of real shipped text per language."""
    return {lang: " ".join(running_text(lang, "demo")[3:6]) for lang in ALL_LANGS}


def _letters(text: str, script: str) -> int:
    return len(regex.findall(rf"(?=\p{{{script}}})\p{{L}}", text))


def _nfd_letters(text: str) -> list[str]:
    """Base characters once combining marks are taken off."""
    return [c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"]


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_deterministic_for_a_seed_and_seed_matters(name, texts):
    # a text where every perturbation has something to act on
    text = texts["fr"] + " " + texts["ru"] + " " + texts["zh"][:40]
    a = perturb(text, name, 0.5, seed=7)
    assert a == perturb(text, name, 0.5, seed=7)
    assert a != text
    assert perturb(text, name, 0.5, seed=8) != a
    assert perturb(text, name, 0.0, seed=7) == text


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_every_perturbation_changes_more_at_higher_severity(name, texts):
    text = texts["fr"][:300] + " " + texts["ru"][:300] + " " + texts["zh"][:40]
    graphemes = regex.findall(r"\X", text)
    changed = []
    for s in (0.1, 0.5, 1.0):
        out = regex.findall(r"\X", perturb(text, name, s, seed=3))
        sm = difflib.SequenceMatcher(None, graphemes, out, autojunk=False)
        matched = sum(b.size for b in sm.get_matching_blocks())
        changed.append(len(graphemes) + len(out) - 2 * matched)  # insert/delete distance
    assert changed[0] <= changed[1] <= changed[2] and changed[2] > 0


@pytest.mark.parametrize("name", ["homoglyphs", "diacritics"])
def test_changed_units_are_nested_across_severities(name, texts):
    text = texts["vi"] + " " + texts["ru"] + " " + texts["el"]
    low = regex.findall(r"\X", perturb(text, name, 0.25, seed=11))
    high = regex.findall(r"\X", perturb(text, name, 0.5, seed=11))
    orig = regex.findall(r"\X", text)
    assert len(low) == len(high) == len(orig)
    changed_low = {i for i, (a, b) in enumerate(zip(orig, low, strict=True)) if a != b}
    changed_high = {i for i, (a, b) in enumerate(zip(orig, high, strict=True)) if a != b}
    assert changed_low and changed_low < changed_high
    assert all(low[i] == high[i] for i in changed_low)  # changed the same way


def test_batch_gives_each_example_its_own_stream(texts):
    docs = [texts["fr"], texts["ru"], texts["fr"]]
    out = perturb_batch(docs, "typos", 0.5, seed=1)
    assert out == perturb_batch(docs, "typos", 0.5, seed=1)
    assert out[0] != out[2]  # same text, different example: different noise
    assert perturb_batch(docs[:2], "typos", 0.5, seed=1) == out[:2]  # independent of later ones
    assert perturb_batch(docs, "typos", 0.0, seed=1) == docs


# --------------------------------------------------------------------------- script safety


@pytest.mark.parametrize("lang", sorted(SCRIPTS))
def test_diacritic_removal_keeps_every_letter_and_script(lang, texts):
    text = texts[lang]
    out = perturb(text, "diacritics", 1.0, seed=0)
    script = SCRIPTS[lang]
    # ASCII folding would wipe the script out; this removal must not lose one letter of it
    assert _letters(anyascii(text), script) == 0
    assert _letters(out, script) == _letters(text, script) > 100
    if lang == "hi":
        assert out == text  # vowel signs, viramas and nuktas of an abugida are spelling
    else:
        assert _nfd_letters(out) == _nfd_letters(text)  # only marks went
    assert unicodedata.is_normalized("NFC", out)


def test_diacritic_removal_on_accented_alphabets(texts):
    el = perturb(texts["el"], "diacritics", 1.0, seed=0)
    assert "ή" in texts["el"] and not any(
        unicodedata.category(c) == "Mn" for c in unicodedata.normalize("NFD", el)
    )
    assert perturb("Шрёдингер, йод", "diacritics", 1.0) == "Шредингер, иод"
    assert perturb("Lĩnh vực Khoa học", "diacritics", 1.0) == "Linh vuc Khoa hoc"
    # đ and ø are letters of their own, not a base plus a mark: they stay
    assert perturb("đường Søren", "diacritics", 1.0) == "đuong Søren"


@pytest.mark.parametrize("lang", ALL_LANGS)
def test_case_only_changes_case(lang, texts):
    out = perturb(texts[lang], "case", 1.0, seed=0)
    assert out.casefold() == texts[lang].casefold()
    assert (out != texts[lang]) == (lang != "ar")  # ar: no cased letter at all
    if lang in ("ar", "hi", "he", "ko", "zh"):  # uncased scripts: only Latin words (LIGO) move
        latin = regex.compile(r"\p{Latin}")
        assert latin.sub("", out) == latin.sub("", texts[lang])


@pytest.mark.parametrize("lang", ALL_LANGS)
def test_nfc_nfd_is_lossless(lang, texts):
    out = perturb(texts[lang], "nfc_nfd", 1.0, seed=0)
    assert unicodedata.normalize("NFC", out) == unicodedata.normalize("NFC", texts[lang])
    if lang in ("fr", "vi", "el", "ru", "ko"):  # have precomposed letters or syllables
        assert out != texts[lang] and len(out) > len(texts[lang])


@pytest.mark.parametrize("lang", ["ru", "el", "ar", "hi", "fr"])
def test_typos_stay_in_the_words_script(lang, texts):
    text = texts[lang]
    out = perturb(text, "typos", 1.0, seed=0)
    words_in = regex.findall(r"[\w\p{M}]+", text)
    words_out = regex.findall(r"[\w\p{M}]+", out)
    assert len(words_in) == len(words_out)
    assert sum(a != b for a, b in zip(words_in, words_out, strict=True)) > 0.8 * sum(
        len(regex.findall(r"\X", w)) >= 2 for w in words_in
    )

    def scripts(t: str) -> set[str]:
        names = ("Latin", "Cyrillic", "Greek", "Arabic", "Devanagari")
        return {s for s in names if _letters(t, s)}

    assert scripts(out) <= scripts(text)  # no foreign letters typed in


@pytest.mark.parametrize("lang", ["ru", "el", "fr", "ar"])
def test_homoglyphs_swap_lookalikes_only(lang, texts):
    text = texts[lang]
    out = perturb(text, "homoglyphs", 1.0, seed=0)
    assert len(out) == len(text)
    for a, b in zip(text, out, strict=True):
        assert a == b or HOMOGLYPHS.get(a, "").find(b) >= 0
    assert (out != text) == (lang != "ar")  # Arabic has no Latin look-alikes


@pytest.mark.parametrize("lang", ALL_LANGS)
def test_punctuation_noise_leaves_letters(lang, texts):
    out = perturb(texts[lang], "punctuation", 1.0, seed=0)
    strip = regex.compile(r"[\s\p{P}]")
    assert strip.sub("", out) == strip.sub("", texts[lang])
    assert out != texts[lang]


@pytest.mark.parametrize("lang", ["ru", "el", "ar", "hi", "fr"])
def test_transliteration_romanises_non_latin_words(lang, texts):
    text = texts[lang]
    out = perturb(text, "transliterate", 1.0, seed=0)
    if lang == "fr":
        assert out == text  # already Latin: accents are the diacritic perturbation's job
        return
    assert _letters(out, SCRIPTS[lang]) == 0 and _letters(out, "Latin") > 100
    words = regex.compile(r"[\w\p{M}]+")
    assert len(words.findall(out)) >= len(words.findall(text))
    half = perturb(text, "transliterate", 0.5, seed=0)
    assert 0 < _letters(half, SCRIPTS[lang]) < _letters(text, SCRIPTS[lang])


# --------------------------------------------------------------------------- errors, plot


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown perturbation 'typo'.*typos"):
        perturb("text", "typo", 0.5)
    with pytest.raises(ValueError, match=r"severity must be in \[0, 1\], got 1.5"):
        perturb("text", "case", 1.5)
    with pytest.raises(TypeError, match="severity must be a number"):
        perturb("text", "case", "high")
    with pytest.raises(TypeError, match="text must be str, got bytes"):
        perturb(b"text", "case", 0.5)
    with pytest.raises(TypeError, match="not one string"):
        perturb_batch("text", "case", 0.5)
    with pytest.raises(TypeError, match="text 1 is NoneType"):
        perturb_batch(["a", None], "case", 0.5)
    assert SEVERITIES[0] == 0.0 and list(SEVERITIES) == sorted(SEVERITIES)
    assert perturb("", "typos", 1.0) == ""


def test_robustness_plot_png(tmp_path):
    curves = {
        "de": [(0.0, 0.8), (0.5, 0.7), (1.0, 0.55)],
        "ru": [(0.0, 0.7, 0.65, 0.75), (0.5, 0.6, 0.55, 0.65), (1.0, 0.4, 0.35, 0.45)],
    }
    path = plot_robustness(curves, tmp_path / "robust.png", title="typos")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100 and float(np.std(img)) > 0.01
    with pytest.raises(ValueError, match="severity, value"):
        plot_robustness({"de": [(0.0, 0.8, 0.7)]}, tmp_path / "bad.png")
