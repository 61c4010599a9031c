"""Perturbations change spelling, never words: per-language diacritic rules and transliteration
on real words of each language, protected placeholders and identifiers, severity as measured
corruption, determinism and nesting, script safety on the real running text ``dataset_build``
ships (Cyrillic, Greek, Arabic, Devanagari...)."""

from __future__ import annotations

import random
import unicodedata

import matplotlib.image as mpimg
import numpy as np
import pytest
import regex
from anyascii import anyascii

from evaluation.perturb import (
    DIACRITIC_RULES,
    HOMOGLYPHS,
    PERTURBATIONS,
    SEVERITIES,
    corruption,
    edit_distance,
    perturb,
    perturb_batch,
    perturb_measured,
    protected_spans,
)
from evaluation.plots import plot_robustness
from quality_models.shipped_text import running_text
from training.gettext_corpus import PLACEHOLDER_RE

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


def dia(text: str, lang: str | None) -> str:
    return perturb(text, "diacritics", 1.0, lang=lang)


def translit(text: str, lang: str | None) -> str:
    return perturb(text, "transliterate", 1.0, lang=lang)


# --------------------------------------------------------------------------- diacritics by language


def test_german_writes_umlauts_and_eszett_out():
    assert dia("Größe", "de") == "Groesse"
    assert dia("Straße", "de") == "Strasse"
    assert dia("Übersicht der Änderungen", "de") == "Uebersicht der Aenderungen"
    assert dia("ÄNDERUNGEN ÜBERNEHMEN", "de") == "AENDERUNGEN UEBERNEHMEN"  # all caps: AE
    assert dia("Café", "de") == "Cafe"  # a loanword's accent just goes
    assert "Große" != dia("Größe", "de")  # never a letter dropped into another word


def test_russian_drops_yo_and_stress_but_keeps_short_i():
    assert dia("файл", "ru") == "файл"  # й is a letter, not и with a mark
    assert dia("Шрёдингер, йод", "ru") == "Шредингер, йод"
    assert dia("Её ёлка", "ru") == "Ее елка"
    assert dia("ЁЛКА", "ru") == "ЕЛКА"
    assert dia("за́мок", "ru") == "замок"  # a dictionary stress mark


def test_ukrainian_keeps_its_letters():
    for word in ("Її", "їжак", "йод", "ґанок", "Київ", "Європа"):
        assert dia(word, "uk") == word
    assert dia("за́мок", "uk") == "замок"  # only stress marks are optional
    assert dia("ѝ", "bg") == "и"  # Bulgarian's optional grave


def test_latin_languages_drop_only_optional_marks():
    assert dia("numéro, ça, où, Noël, fenêtre", "fr") == "numero, ca, ou, Noel, fenetre"
    assert dia("año canción pingüino", "es") == "año cancion pinguino"  # ñ is its own letter
    assert dia("perché città", "it") == "perche citta"
    assert dia("Zażółć gęślą jaźń, Łódź", "pl") == "Zazolc gesla jazn, Lodz"
    assert dia("Işık İstanbul çiçek", "tr") == "Isik Istanbul cicek"
    assert dia("Århus blåbærgrød", "da") == "Aarhus blaabaergroed"
    assert dia("Tiếng Việt đường", "vi") == "Tieng Viet đuong"  # đ is a letter of its own


def test_other_scripts_strip_their_optional_points_only():
    assert dia("Καλημέρα, προϊόν", "el") == "Καλημερα, προιον"
    assert dia("أَهْلًا إِسْلَام", "ar") == "اهلا اسلام"  # harakat go, alef loses its hamza
    assert dia("مُؤْمِن", "ar") == "مؤمن"  # hamza on waw is spelling
    assert dia("שָׁלוֹם", "he") == "שלום"
    assert dia("ज़िंदगी फ़ाइल", "hi") == "जिंदगी फाइल"  # the optional nukta
    assert dia("हिन्दी", "hi") == "हिन्दी"  # virama and vowel signs are spelling
    assert dia("が見つかりません", "ja") == "が見つかりません"  # dakuten are spelling
    assert dia("파일을 찾을 수 없습니다", "ko") == "파일을 찾을 수 없습니다"
    # every task language has its rule (French and Italian: the Latin default, every mark)
    assert {"de", "es", "ru", "uk", "zh", "ja", "ko"} <= set(DIACRITIC_RULES)


@pytest.mark.parametrize("lang", sorted(SCRIPTS))
def test_diacritic_removal_keeps_every_letter_and_script(lang, texts):
    text = texts[lang]
    for code in (None, lang):
        out = perturb(text, "diacritics", 1.0, seed=0, lang=code)
        script = SCRIPTS[lang]
        # ASCII folding would wipe the script out; this removal must not lose one letter of it
        assert _letters(anyascii(text), script) == 0
        assert _letters(out, script) == _letters(text, script) > 100
        if lang == "hi" and code is None:
            assert out == text  # an abugida's marks are spelling unless the language says
        assert _nfd_letters(out) == _nfd_letters(text)  # only marks went
        assert unicodedata.is_normalized("NFC", out)


# --------------------------------------------------------------------------- transliteration


def test_japanese_is_read_in_kana_not_mandarin():
    assert translit("拒否", "ja") == "kyohi"  # not "JuFou"
    assert translit("ファイル", "ja") == "fairu"
    out = translit("設定ファイル「%s」を開けません", "ja")
    assert out.startswith("settei fairu") and "「%s」" in out
    assert not regex.search(r"[\p{Han}\p{Hiragana}\p{Katakana}]", out)
    # without a language, kana in the text mark it as Japanese
    assert translit("拒否されました", None) == translit("拒否されました", "ja")


def test_chinese_cyrillic_and_korean_romanisation():
    assert translit("文件不存在", "zh") == "wen jian bu cun zai"
    assert translit("Щука, объём", "ru") == "Shchuka, obyom"
    assert translit("Привет, мир", "ru") == "Privet, mir"
    # the Ukrainian national table: и -> y, г -> h, initial ї/є/ю/я -> yi/ye/yu/ya, зг -> zgh
    assert (
        translit("Київ, Їжак, м'ясо, Згорани, Юрій", "uk") == "Kyiv, Yizhak, miaso, Zghorany, Yurii"
    )
    assert translit("파일을 찾을 수 없습니다", "ko") == "paileul chajeul su eobsseubnida"
    assert translit("Καλημέρα", "el") == "Kalimera"


@pytest.mark.parametrize("lang", ["fr", "de", "es"])
def test_latin_text_has_nothing_to_transliterate(lang):
    text = {"fr": "Le numéro de ligne", "de": "Größe der Datei", "es": "Año de la canción"}[lang]
    p = perturb_measured(text, "transliterate", 1.0, lang=lang)
    assert p.text == text and p.corruption == 0.0 and p.available == 0


@pytest.mark.parametrize("lang", ["ru", "el", "ar", "hi"])
def test_transliteration_romanises_non_latin_words(lang, texts):
    text = texts[lang]
    out = perturb(text, "transliterate", 1.0, seed=0, lang=lang)
    assert _letters(out, SCRIPTS[lang]) < 0.01 * _letters(text, SCRIPTS[lang])
    assert _letters(out, "Latin") > 100
    half = perturb(text, "transliterate", 0.5, seed=0, lang=lang)
    assert 0 < _letters(half, SCRIPTS[lang]) < _letters(text, SCRIPTS[lang])


# --------------------------------------------------------------------------- protected spans

GETTEXT = [
    ("en", "Could not open file %s: %m (see --help, -v or --output-document=FILE)"),
    ("en", "%1$s: option '%2$s' requires an argument; set PGDATA or use pg_ctl"),
    ("en", "Report bugs to bugs@debian.org or https://bugs.debian.org/cgi-bin/pkgreport.cgi"),
    ("en", "Unable to read /etc/apt/sources.list: {0} entries, {name} in GtkWindow (utf8)"),
    ("de", "Konnte Datei »%s« nicht öffnen: %m. Größe: %(size)d, siehe --help"),
    ("fr", "Impossible d’ouvrir le fichier « %s » : %m, voir <var> et $HOME"),
    ("es", "No se puede abrir «%s»: %m; año %<PRIu64> en apt.conf"),
    ("ru", "Не удалось открыть файл «%s»: %m; используйте --force-yes и ~/.bashrc"),
    ("uk", "Не вдалося відкрити файл «%s»: %m; див. %1$d і <var>"),
    ("ja", "ファイル '%s' を開けません: %m。--help を参照"),
    ("zh", "无法打开文件 %s：%m，参见 --help 和 PGDATA"),
    ("ko", "%s 파일을 열 수 없습니다: %m (--help 참고)"),
]


def _in_order(parts: list[str], text: str) -> bool:
    pos = 0
    for p in parts:
        pos = text.find(p, pos)
        if pos < 0:
            return False
        pos += len(p)
    return True


def test_protected_spans_find_what_must_not_change():
    text = GETTEXT[0][1] + " " + GETTEXT[1][1] + " " + GETTEXT[2][1] + " " + GETTEXT[3][1]
    found = {text[a:b] for a, b in protected_spans(text)}
    for span in ("%s", "%m", "--help", "-v", "--output-document=FILE", "%1$s", "%2$s", "PGDATA",
                 "pg_ctl", "bugs@debian.org", "https://bugs.debian.org/cgi-bin/pkgreport.cgi",
                 "/etc/apt/sources.list", "{0}", "{name}", "GtkWindow", "utf8"):  # fmt: skip
        assert span in found, span
    assert not {"Could", "open", "file", "argument", "entries"} & found  # words stay words
    t = "Größe: %(size)d, %<PRIu64>, <var>, $HOME, ~/.bashrc, apt.conf"
    got = {t[a:b] for a, b in protected_spans(t)}
    assert {"%(size)d", "%<PRIu64>", "<var>", "$HOME", "~/.bashrc", "apt.conf"} <= got


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_no_perturbation_touches_placeholders_urls_options_or_identifiers(name):
    n_changed = 0
    for lang, text in GETTEXT:
        spans = [text[a:b] for a, b in protected_spans(text)]
        placeholders = PLACEHOLDER_RE.findall(text.replace("%%", ""))
        changed = False
        for seed in range(6):
            for code in (lang, None):
                out = perturb(text, name, 1.0, seed=seed, lang=code)
                changed |= out != text
                assert _in_order(spans, out), (name, text, out)
                assert PLACEHOLDER_RE.findall(out.replace("%%", "")) == placeholders, out
        n_changed += changed
    if name not in ("diacritics", "nfc_nfd", "transliterate"):
        # something is left to change (in ja/zh/ko, case and homoglyphs have only protected
        # Latin words; zh's punctuation all touches a placeholder)
        assert n_changed >= 9, name
    if name == "transliterate":
        assert n_changed == 5  # ru, uk, ja, zh, ko: the words around the placeholders


# --------------------------------------------------------------------------- severity = corruption


def test_edit_distance_and_corruption():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 12))]
        d = np.arange(len(b) + 1)
        for i, x in enumerate(a, 1):
            prev, d = d, np.empty_like(d)
            d[0] = i
            for j, y in enumerate(b, 1):
                d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
        assert edit_distance(a, b) == d[-1], (a, b)  # the textbook dynamic programme
    assert corruption("файл", "файл") == 0.0
    assert corruption("Größe", "Groesse") == pytest.approx(4 / 7)  # ö -> oe, ß -> ss
    assert corruption("拒否", "kyohi") == 1.0  # over the longer text: never above 1
    assert corruption("é", unicodedata.normalize("NFD", "é")) == 1.0  # one character, changed


@pytest.mark.parametrize("name", ["homoglyphs", "case", "typos", "punctuation", "nfc_nfd"])
def test_severity_is_the_measured_share_of_characters_changed(name, texts):
    text = texts["fr"][:400]  # long enough for every perturbation to reach 5% and 10%
    n = len(regex.findall(r"\X", text))
    for sev in (0.05, 0.1):
        for seed in range(3):
            p = perturb_measured(text, name, sev, seed=seed, lang="fr")
            assert p.corruption == pytest.approx(corruption(text, p.text))
            if name == "nfc_nfd":  # French has a few accented letters: it stops short
                assert 0 < p.corruption <= sev + 1 / n
                continue
            # within one unit of the target (a word for case and typos)
            assert abs(p.corruption - sev) <= 8 / n, (name, sev, p.corruption)


def test_severity_stops_short_when_the_text_runs_out_and_says_so():
    p = perturb_measured("Le numéro de la ligne", "diacritics", 0.5, lang="fr")
    assert p.text == "Le numero de la ligne" and p.edits == p.available == 1
    assert p.corruption == pytest.approx(1 / 21)
    q = perturb_measured("Le numéro de la ligne", "diacritics", 0.01, lang="fr")
    assert q.text == p.text  # at least one edit when there is one to make


# --------------------------------------------------------------------------- determinism, nesting


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_deterministic_for_a_seed_and_seed_matters(name, texts):
    # a text where every perturbation has something to act on
    text = texts["fr"] + " " + texts["ru"] + " " + texts["zh"][:40]
    sev = perturb_measured(text, name, 1.0).corruption / 2  # half of what it can do
    a = perturb(text, name, sev, seed=7)
    assert a == perturb(text, name, sev, seed=7)
    assert a != text
    assert perturb(text, name, sev, seed=8) != a
    assert perturb(text, name, 0.0, seed=7) == text


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_every_perturbation_changes_more_at_higher_severity(name, texts):
    text = texts["fr"][:300] + " " + texts["ru"][:300] + " " + texts["zh"][:40]
    changed = [perturb_measured(text, name, s, seed=3).corruption for s in (0.05, 0.2, 1.0)]
    assert changed[0] <= changed[1] <= changed[2] and changed[2] > 0


@pytest.mark.parametrize("name", ["homoglyphs", "diacritics", "case"])
def test_changed_units_are_nested_across_severities(name, texts):
    text = texts["vi"] + " " + texts["ru"] + " " + texts["el"]
    low = regex.findall(r"\X", perturb(text, name, 0.02, seed=11))
    high = regex.findall(r"\X", perturb(text, name, 0.05, seed=11))
    orig = regex.findall(r"\X", text)
    assert len(low) == len(high) == len(orig)
    changed_low = {i for i, (a, b) in enumerate(zip(orig, low, strict=True)) if a != b}
    changed_high = {i for i, (a, b) in enumerate(zip(orig, high, strict=True)) if a != b}
    assert changed_low and changed_low < changed_high
    assert all(low[i] == high[i] for i in changed_low)  # changed the same way


def test_batch_gives_each_example_its_own_stream(texts):
    docs = [texts["fr"], texts["ru"], texts["fr"]]
    out = perturb_batch(docs, "typos", 0.1, seed=1)
    assert out == perturb_batch(docs, "typos", 0.1, seed=1)
    assert out[0] != out[2]  # same text, different example: different noise
    assert perturb_batch(docs[:2], "typos", 0.1, seed=1) == out[:2]  # independent of later ones
    assert perturb_batch(docs, "typos", 0.0, seed=1) == docs
    assert perturb_batch(["файл ё"], "diacritics", 1.0, langs=["ru"]) == ["файл е"]


# --------------------------------------------------------------------------- script safety


@pytest.mark.parametrize("lang", ALL_LANGS)
def test_case_only_changes_case(lang, texts):
    out = perturb(texts[lang], "case", 1.0, seed=0, lang=lang)
    assert out.casefold() == texts[lang].casefold() and len(out) == len(texts[lang])
    if lang in ("fr", "vi", "de", "ru", "el"):
        assert out != texts[lang]
    else:  # uncased scripts: only Latin words move (none here: LIGO is protected)
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
    with pytest.raises(ValueError, match="2 languages for 1 texts"):
        perturb_batch(["a"], "case", 0.5, langs=["en", "de"])
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
