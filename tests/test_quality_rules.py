"""The heuristic quality rules against the behaviour datatrove's filters document.

Each rule is checked on constructed texts at and around its threshold, with the measurement
itself compared with the value datatrove's definition gives. The expected decisions for the
constructed texts were cross-checked by hand against datatrove 0.10.1's GopherQualityFilter,
GopherRepetitionFilter, C4QualityFilter and FineWebQualityFilter (installed in a throwaway venv;
the suite does not need datatrove).
"""

import json
import random

import pyarrow as pa
import pytest

from quality_models.config import (
    ConfigError,
    GovernanceConfig,
    QualityConfig,
    governance_config_from_dict,
)
from quality_models.contract import documents_from_records
from quality_models.demo_corpus import BOILERPLATE, JUNK, SHORT
from quality_models.heuristics import (
    c4_filter,
    count_sentences,
    evaluate,
    fineweb_quality,
    gopher_quality,
    gopher_repetition,
    quality_stage,
    settings_for,
    terminal_punctuation,
    tokenize,
)
from quality_models.shipped_text import dataset_build_paragraphs, running_text

DEMO = ("en", "de", "fr", "es", "pl", "tr", "ru", "uk", "el", "ar", "hi", "zh", "ja", "th")


def _config(profile: str = "web", **overrides) -> GovernanceConfig:
    return GovernanceConfig(quality=QualityConfig(profile=profile, overrides=overrides))


def _settings(lang: str = "en", profile: str = "web", **overrides) -> dict:
    return settings_for(lang, _config(profile, **overrides))


def _vocab(n: int, length: int = 5) -> list[str]:
    """n distinct lowercase words of ``length`` letters (no repeated n-grams)."""
    out = []
    for i in range(n):
        w, k = "", i
        for _ in range(length):
            w, k = chr(97 + k % 26) + w, k // 26
        out.append(w)
    return out


def _docs(texts, lang="en", **extra):
    return documents_from_records(
        {"doc_id": f"d{i:04d}", "source": "test", "text": t, "lang": lang, **extra}
        for i, t in enumerate(texts)
    )


# --- tokens -------------------------------------------------------------------------------------


def test_tokens_split_punctuation_like_spacy():
    # datatrove counts spaCy tokens: punctuation marks are words of their own
    assert tokenize('He said: "Hello, world." (ok)') == [
        "He", "said", ":", '"', "Hello", ",", "world", ".", '"', "(", "ok", ")",
    ]  # fmt: skip
    assert tokenize("Wait... 3.14 and 1,000 at 10:30, see sysctl.conf --help /etc") == [
        "Wait", "...", "3.14", "and", "1,000", "at", "10:30", ",", "see", "sysctl.conf",
        "--help", "/etc",
    ]  # fmt: skip
    assert tokenize("well-known") == ["well", "-", "known"]
    assert tokenize("well-known", split_hyphens=False) == ["well-known"]
    assert tokenize("l'homme", split_apostrophes=True) == ["l'", "homme"]
    assert tokenize("我用Python写。") == ["我", "用", "Python", "写", "。"]


def test_terminal_punctuation_is_the_sentence_terminal_set():
    marks = set(terminal_punctuation())
    assert {".", "!", "?", "。", "！", "？", "।", "॥", "؟", "።", "\u17d6"} <= marks
    # datatrove's TERMINAL_PUNCTUATION has neither closing quotes, colons, brackets nor "…"
    assert not {'"', "'", ":", ")", "…", ",", ";"} & marks


# --- Gopher quality -----------------------------------------------------------------------------


def _gq(text: str, lang: str = "en", profile: str = "web", **overrides):
    s = _settings(lang, profile, **overrides)
    return gopher_quality(text, tokenize(text), lang, s)


def test_alpha_rule_rejects_forty_percent_numbers_and_keeps_eighty_five_percent_words():
    words = ["the", "of"] + _vocab(58)
    numeric = " ".join(words + [str(1000 + i) for i in range(40)])  # 60% alphabetic
    reason, sig = _gq(numeric)
    assert sig["alpha_words_ratio"] == pytest.approx(0.6)
    assert reason == "gopher_below_alpha_threshold"
    words = ["the", "of"] + _vocab(83)
    mostly_words = " ".join(words + [str(1000 + i) for i in range(15)])  # 85% alphabetic
    reason, sig = _gq(mostly_words)
    assert sig["alpha_words_ratio"] == pytest.approx(0.85) and reason == ""
    at = " ".join(["the", "of"] + _vocab(78) + [str(1000 + i) for i in range(20)])  # 0.80
    assert _gq(at)[0] == ""  # the rule is "fewer than 80%", so exactly 80% passes
    # punctuation marks are tokens too: 75 words + 25 commas is 75% alphabetic
    commas = " ".join(
        w + ("," if i % 3 == 0 else "") for i, w in enumerate(["the", "of"] + _vocab(73))
    )
    reason, sig = _gq(commas)
    assert sig["n_tokens"] == 100 and sig["alpha_words_ratio"] == pytest.approx(0.75)
    assert reason == "gopher_below_alpha_threshold"


def test_doc_length_counts_non_symbol_words_only():
    base = ["the", "of"] + _vocab(47)
    reason, sig = _gq(" ".join(base) + " " + " ".join(["-"] * 10))  # 49 words + 10 symbols
    assert (sig["n_words"], sig["n_tokens"], reason) == (49, 59, "gopher_short_doc")
    assert _gq(" ".join(base + ["extra"]))[0] == ""  # 50 words
    long_doc = " ".join(["the", "of"] + _vocab(120))
    assert _gq(long_doc, max_doc_words=100)[0] == "gopher_long_doc"


def test_average_word_length_bounds():
    three = " ".join(["the", "and"] + _vocab(58, length=3))  # mean exactly 3.0
    assert _gq(three)[1]["avg_word_length"] == pytest.approx(3.0) and _gq(three)[0] == ""
    short = " ".join(["the", "of"] + _vocab(58, length=3))  # (3 + 2 + 58*3)/60 = 2.983
    assert _gq(short)[0] == "gopher_below_avg_threshold"
    long_words = " ".join(["the", "of"] + _vocab(58, length=11))
    assert _gq(long_words)[0] == "gopher_above_avg_threshold"
    # symbols do not pull the mean down: "-" is not a word
    assert _gq(three + " -" * 20)[1]["avg_word_length"] == pytest.approx(3.0)


def test_hash_and_ellipsis_ratios_are_separate_and_per_token():
    words = ["the", "of"] + _vocab(88)
    ten = " ".join(words + ["#"] * 10)  # 10 hashes / 100 tokens = 0.1: not above
    reason, sig = _gq(ten)
    assert sig["hash_word_ratio"] == pytest.approx(0.1) and reason == ""
    eleven = " ".join(words + ["#"] * 11)
    assert _gq(eleven)[0] == "gopher_too_many_hashes"
    # "..." and "…" both count; 5 + 6 of 101 tokens
    ell = " ".join(words + ["..."] * 5 + ["…"] * 6)
    reason, sig = _gq(ell)
    assert sig["ellipsis_word_ratio"] == pytest.approx(11 / 101)
    assert reason == "gopher_too_many_ellipsis"
    assert sig["hash_word_ratio"] == 0  # not summed with the hashes


def test_bullet_and_end_ellipsis_lines():
    words = _vocab(100)
    lines = [" ".join(["the", "of"] + words[i * 10 : i * 10 + 8]) for i in range(10)]
    nine = "\n".join("- " + ln if i < 9 else ln for i, ln in enumerate(lines))
    assert _gq(nine)[1]["bullet_lines_ratio"] == pytest.approx(0.9) and _gq(nine)[0] == ""
    ten = "\n".join("• " + ln for ln in lines)
    assert _gq(ten)[0] == "gopher_too_many_bullets"
    stars = "\n".join("* " + ln for ln in lines)  # datatrove counts only "•" and "-"
    assert _gq(stars)[1]["bullet_lines_ratio"] == 0
    three = "\n".join(ln + ("..." if i < 3 else ".") for i, ln in enumerate(lines))
    assert _gq(three)[0] == ""
    four = "\n".join(ln + ("…" if i < 4 else ".") for i, ln in enumerate(lines))
    reason, sig = _gq(four)
    assert sig["ellipsis_lines_ratio"] == pytest.approx(0.4)
    assert reason == "gopher_too_many_end_ellipsis"
    # empty lines count in the denominator (str.splitlines)
    padded = "\n\n".join(ln + ("…" if i < 4 else ".") for i, ln in enumerate(lines))
    assert _gq(padded)[1]["ellipsis_lines_ratio"] == pytest.approx(4 / 19)


def test_stop_words_are_distinct_and_case_sensitive():
    words = _vocab(60)
    assert _gq(" ".join(words + ["the"] * 5))[0] == "gopher_enough_stop_words"  # one distinct
    reason, sig = _gq(" ".join(words + ["the", "with"]))
    assert (sig["stop_words"], reason) == (2, "")
    assert _gq(" ".join(words + ["The", "With"]))[0] == "gopher_enough_stop_words"
    # other languages use stopwordsiso's list (or languages.yaml's stop_words)
    de = " ".join(_vocab(60) + ["und", "der"])
    assert _gq(de, lang="de")[1]["stop_words"] == 2
    assert _gq(de, lang="de", stop_words=["und"])[1]["stop_words"] == 1
    # a language without any list (lid.176 emits many) skips the rule instead of failing all text
    reason, sig = _gq(" ".join(_vocab(60)), lang="xx")
    assert (reason, sig["stop_words_rule"]) == ("", "skipped")


def test_replacement_characters_are_rejected():
    text = " ".join(["the", "of"] + _vocab(60)) + " caf\ufffd"
    assert _gq(text)[0] == "replacement_chars"


# --- Gopher repetition --------------------------------------------------------------------------


def _rep(text: str, lang: str = "en", **overrides):
    s = _settings(lang, "web", **overrides)
    return gopher_repetition(text, tokenize(text), s)


def test_duplicate_lines_and_paragraphs():
    uniq = _vocab(10, 19)  # 10 lines of 19 characters
    lines = uniq[:7] + uniq[:3]  # 3 repeats (the first copy does not count)
    text = "\n".join(lines)
    reason, sig = _rep(text)
    assert sig["dup_line_frac"] == pytest.approx(0.3)  # 3/10: not above 0.3
    assert sig["dup_line_char_frac"] == pytest.approx(3 * 19 / len(text))
    assert reason == "dup_line_char_frac"  # 57/199 > 0.2
    reason, sig = _rep("\n".join(uniq[:6] + uniq[:4]))
    assert reason == "dup_line_frac"  # 4/10 > 0.3, checked before the character fraction
    paras = "\n\n".join(uniq[:6] + uniq[:4])
    reason, sig = _rep(paras)
    assert sig["dup_para_frac"] == pytest.approx(0.4) and reason == "dup_para_frac"


def test_top_ngram_fraction_counts_the_most_frequent_ngram_even_once():
    # a 4-word text: its most frequent 2-gram "ab cd" (5 chars) appears once: 5/11 > 0.2
    reason, sig = _rep("ab cd ef gh")
    assert sig["top_2_gram"] == pytest.approx(5 / 11) and reason == "top_2_gram"
    # 100 distinct 4-letter words: no n-gram is frequent
    words = _vocab(100, 4)
    reason, sig = _rep(" ".join(words))
    assert reason == "" and sig["top_2_gram"] == pytest.approx(9 / 499)
    # "ab cd" repeated 20 times among 80 other words: 20 * 5 / len(text)
    text = " ".join(["ab cd"] * 20 + words[:60])
    reason, sig = _rep(text)
    assert sig["top_2_gram"] == pytest.approx(100 / len(text)) and reason == "top_2_gram"


def test_duplicated_ngrams_skip_past_each_repeat():
    # 11 tokens: "aaaaa" at 0 is new, at 1 repeated (+5, jump to 6), at 6 repeated (+5, jump to
    # 11): 10 of 21 characters; counting every repeated window would give 30
    reason, sig = _rep(" ".join("a" * 11))
    assert sig["duplicated_5_n_grams"] == pytest.approx(10 / 21)
    assert _rep(" ".join("a" * 10))[1]["duplicated_5_n_grams"] == pytest.approx(5 / 19)
    words = _vocab(60, 4)
    text = " ".join(words + words[:6])  # a repeated 6-gram: one 5-gram repeat, then a jump
    reason, sig = _rep(text)
    assert sig["duplicated_5_n_grams"] == pytest.approx(20 / len(text))  # 5 words x 4 chars
    assert sig["duplicated_6_n_grams"] == pytest.approx(24 / len(text))
    assert sig["duplicated_7_n_grams"] == 0
    assert reason == ""  # 24/329 = 0.073 is under 0.14


# --- C4 -----------------------------------------------------------------------------------------

GOOD = [
    "The committee met on Tuesday to discuss the budget.",
    "Several members raised concerns about the new proposal.",
    "After a long debate, the chair called for a vote.",
    "The motion passed with a clear majority of the members.",
    "Minutes of the meeting will be published next week.",
    "Questions may be sent to the secretary by email.",
]


def _c4(text: str, profile: str = "web", lang: str = "en", **overrides):
    return c4_filter(text, _settings(lang, profile, **overrides))


def test_c4_javascript_line_is_removed_and_the_rest_kept():
    text = "\n".join(GOOD[:3] + ["Please enable JavaScript to view this page."] + GOOD[3:])
    reason, out, sig = _c4(text)
    assert reason == "" and out == "\n".join(GOOD)
    assert sig["lines_removed"] == {"javascript": 1}
    assert sig["chars_removed"] == {"javascript": 43}


def test_c4_policy_line_is_removed():
    text = "\n".join(GOOD + ["This website uses cookies to improve your experience."])
    reason, out, sig = _c4(text)
    assert reason == "" and out == "\n".join(GOOD) and sig["lines_removed"] == {"policy": 1}


def test_c4_document_with_every_line_removed_is_rejected():
    text = "Privacy policy | Cookie policy | Terms of use.\nPlease enable JavaScript to continue."
    reason, out, sig = _c4(text)
    assert (reason, out) == ("no_lines_left", "")
    assert sig["lines_removed"] == {"javascript": 1, "policy": 1}
    res = quality_stage(_docs([text]), _config("short"))
    assert res.rejected["reason"].to_pylist() == ["c4:no_lines_left"]


def test_c4_line_filters_in_datatrove_order():
    lines = GOOD + [
        "A line without terminal punctuation",
        "Trailing ellipsis is not an ending...",
        "Two words.",
        "x" * 1001 + " is too long.",
        "As reported earlier [12], the budget grew.",
    ]
    reason, out, sig = _c4("\n".join(lines))
    assert reason == ""
    assert sig["lines_removed"] == {"no_terminal_punct": 2, "too_few_words": 1, "too_long_word": 1}
    assert out.endswith("As reported earlier , the budget grew.")  # the citation is deleted
    assert sig["citations_removed"] == 1
    # lorem ipsum rejects the document only on a line that survived the earlier filters
    assert _c4("\n".join(GOOD + ["Lorem ipsum dolor sit amet"]))[0] == ""
    assert _c4("\n".join(GOOD + ["Lorem ipsum dolor sit amet."]))[0] == "lorem_ipsum"
    assert _c4("\n".join(GOOD + ["Use {braces} like this."]))[0] == "curly_bracket"
    # a javascript line is removed before the curly-bracket rule sees it
    assert _c4("\n".join(GOOD + ["Write javascript {code} here."]))[0] == ""


def test_c4_sentence_minimum():
    assert count_sentences("One. Two! Three? Four... still four.") == 4
    assert count_sentences("") == 0
    assert _c4(" ".join(GOOD[:4]))[0] == "too_few_sentences"  # 4 sentences on one line
    assert _c4(" ".join(GOOD[:5]))[0] == ""


def test_c4_short_profile_keeps_messages_and_placeholders():
    for text in ("Save the file", "Could not open {filename}", "Two words"):
        reason, out, _ = _c4(text, "short")
        assert (reason, out) == ("", text)


# --- FineWeb ------------------------------------------------------------------------------------


def _fw(text: str, lang: str = "en", **overrides):
    s = _settings(lang, "web", **overrides)
    return fineweb_quality(text, tokenize(text), s)


def _long_line(i: int, end: str = ".") -> str:
    return " ".join(_vocab(60)[i * 6 : i * 6 + 6]) + end  # 35 + 1 characters


def test_fineweb_line_punctuation_ratio():
    one_of_eight = "\n".join(_long_line(i, "." if i == 0 else "") for i in range(8))
    reason, sig = _fw(one_of_eight)
    assert sig["line_punct_ratio"] == pytest.approx(0.125) and reason == ""
    one_of_nine = "\n".join(_long_line(i, "." if i == 0 else "") for i in range(9))
    assert _fw(one_of_nine)[0] == "line_punct_ratio"
    # ':' ')' '"' and '…' do not end a sentence; '。' and '।' do
    odd = "\n".join(
        _long_line(i, e) for i, e in enumerate([":", ")", '"', "…", ";", ",", "-", "!"])
    )
    assert _fw(odd)[1]["line_punct_ratio"] == pytest.approx(1 / 8)
    cjk = "\n".join(_long_line(i, e) for i, e in enumerate(["。", "।", "", "", "", "", "", "", ""]))
    assert _fw(cjk)[1]["line_punct_ratio"] == pytest.approx(2 / 9)
    none = "\n".join(_long_line(i, "") for i in range(9))
    assert _fw(none)[0] == "line_punct_ratio"
    assert _fw(none, fineweb_line_punct_exclude_zero=True)[0] == ""


def test_fineweb_short_lines_include_the_length_limit():
    short = "x" * 29 + "."  # 30 characters: short ("<= 30")
    text = "\n".join([short, short.replace("x", "y"), _long_line(0)])
    reason, sig = _fw(text)
    assert sig["short_line_ratio"] == pytest.approx(2 / 3) and reason == ""  # 0.667 < 0.67
    text = "\n".join([short, short.replace("x", "y"), short.replace("x", "z"), _long_line(0)])
    assert _fw(text)[0] == "short_line_ratio"


def test_fineweb_char_duplicates_and_list_ratio():
    lines = [_long_line(i) for i in range(9)]
    text = "\n".join(lines + [lines[0]])
    reason, sig = _fw(text)
    assert sig["char_dup_ratio"] == pytest.approx(36 / (10 * 36)) and reason == "char_dup_ratio"
    # blank lines are not lines, and newlines are not characters
    spaced = "\n\n".join(lines)
    reason, sig = _fw(spaced)
    assert sig["n_lines"] == 9 and sig["char_dup_ratio"] == 0
    # list ratio: newlines over tokens; 16 newlines, 8 tokens per line
    listy = "\n\n".join(_long_line(i) for i in range(9))
    assert _fw(listy)[1]["new_line_ratio"] == pytest.approx(16 / 63)
    very = "\n\n\n".join(_long_line(i) for i in range(10))  # 27 newlines / 70 tokens
    reason, sig = _fw(very)
    assert sig["new_line_ratio"] == pytest.approx(27 / 70) and reason == "list_ratio"


# --- profiles and the stage ---------------------------------------------------------------------


def test_profiles_use_the_same_definitions_with_relaxed_minimums():
    web, short = _settings(profile="web"), _settings(profile="short")
    assert (web["min_doc_words"], web["min_alpha_words_ratio"], web["c4_min_num_sentences"]) == (
        50, 0.8, 5)  # fmt: skip
    message = "Could not open the file."
    # datatrove's FineWeb pipeline runs the repetition filter first: a 5-word text fails top_2_gram
    assert evaluate(message, "en", web, ["gopher", "c4", "fineweb"]).reason == "gopher:top_2_gram"
    assert evaluate(message, "en", web, ["c4"]).reason == "c4:too_few_sentences"
    verdict = evaluate(message, "en", short, ["gopher", "c4", "fineweb"])
    assert verdict.reason == "" and verdict.text == message
    assert set(verdict.signals["skipped"]) >= {"gopher_line_ratios", "gopher_stop_words",
                                               "gopher_top_n_grams", "fineweb"}  # fmt: skip
    # the short profile still measures what it skips, and the alpha rule has the same definition
    assert verdict.signals["gopher_quality"]["alpha_words_ratio"] == pytest.approx(5 / 6)
    assert (
        evaluate("12 34 56 ab", "en", short, ["gopher"]).reason
        == "gopher:gopher_below_alpha_threshold"
    )


def test_unknown_override_is_an_error():
    # datatrove's name for the alpha rule is not ours: a copied config must fail, not be ignored
    with pytest.raises(ConfigError, match="unknown rule"):
        settings_for("en", _config("short", max_non_alpha_words_ratio=0.8))
    with pytest.raises(ConfigError, match="max_non_alpha_words_ratio"):
        governance_config_from_dict({"quality": {"overrides": {"max_non_alpha_words_ratio": 0.8}}})
    cfg = governance_config_from_dict({"quality": {"overrides": {"min_alpha_words_ratio": 0.9}}})
    assert settings_for("de", cfg)["min_alpha_words_ratio"] == 0.9


def test_stage_modifies_text_keeps_extra_columns_and_ledgers_the_original():
    kept_text = "\n".join(GOOD[:2] + ["Enable JavaScript for the full site."] + GOOD[2:])
    rejected_text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit."
    table = _docs([kept_text, rejected_text])
    table = table.append_column("label", pa.array(["a", "b"]))
    res = quality_stage(table, _config("short"))
    assert res.kept.column_names == table.column_names
    assert res.kept["text"].to_pylist() == ["\n".join(GOOD)]
    assert res.kept["label"].to_pylist() == ["a"]
    sig = json.loads(res.kept["quality_signals"][0].as_py())
    assert sig["c4"]["lines_removed"] == {"javascript": 1}
    assert res.rejected["reason"].to_pylist() == ["c4:lorem_ipsum"]
    assert res.rejected["text"].to_pylist() == [rejected_text]
    assert json.loads(res.rejected["details"][0].as_py())["c4"]["lines"] == 1
    assert res.metadata["c4_lines_removed"] == {"javascript": 1}
    assert res.metadata["kept_documents_with_lines_removed"] == 1


def test_quality_rules_signals_and_languages():
    cfg = GovernanceConfig()
    texts = [
        running_text("de", "demo")[3],
        "#### $$$$ %%%% &&&& 1234 5678",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "ok",
    ]
    res = quality_stage(_docs(texts, lang="de"), cfg)
    assert res.kept.num_rows == 1
    assert res.rejected["reason"].to_pylist() == [
        "gopher:gopher_too_many_hashes", "c4:lorem_ipsum", "gopher:gopher_short_doc",
    ]  # fmt: skip
    assert json.loads(res.kept["quality_signals"][0].as_py())["gopher_quality"]["n_words"] > 10
    zh = quality_stage(_docs([running_text("zh", "demo")[4]], lang="zh"), cfg)
    assert zh.kept.num_rows == 1  # no whitespace, yet not "too few words"


def test_planted_junk_and_boilerplate_are_rejected():
    for lang in ("en", "de", "ru", "zh"):
        res = quality_stage(_docs(list(JUNK + BOILERPLATE + SHORT), lang=lang), GovernanceConfig())
        assert res.kept.num_rows == 0, res.kept["text"].to_pylist()


@pytest.mark.parametrize("lang", DEMO)
def test_real_clean_running_text_is_kept(lang):
    paragraphs = list(dataset_build_paragraphs(lang))
    sample = random.Random(0).sample(paragraphs, min(300, len(paragraphs)))
    res = quality_stage(_docs(sample, lang=lang), GovernanceConfig())
    kept = res.kept.num_rows / len(sample)
    assert kept >= 0.95, (kept, res.rejected["reason"].to_pylist()[:10])
