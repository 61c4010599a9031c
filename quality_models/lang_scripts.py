"""Which scripts each language is written in, derived from Unicode CLDR (as the ``babel``
package ships it), never typed in by hand.

The LID stage rejects a document whose dominant script is not a script of its final language
(Cyrillic text cannot be German). The table comes from CLDR's *likely subtags*: every
``lang_Script_Region`` value names a script in which the language is the default somewhere
(``sr`` -> Cyrl, and ``sr_ME`` -> Latn; ``uz`` -> Latn, ``uz_AF`` -> Arab; ``pa_PK`` -> Arab),
so multi-script languages get all their scripts from the data itself.

Explicit handling, and why:

* fastText's lid.176 names languages by their Wikipedia codes; the few that CLDR does not know
  (or knows as another language) are mapped in :data:`WIKIPEDIA_CODES` (``als`` is Alemannic on
  Wikipedia but Tosk Albanian in ISO 639-3; ``eml`` was split into ``egl``/``rgn``; ``sh`` is
  Serbo-Croatian, written in Latin and Cyrillic).
* CLDR writes Chinese as ``Hans``/``Hant``, Japanese as ``Jpan`` (Han + kana) and Korean as
  ``Kore`` (Hangul + Han); :func:`detect_scripts <quality_models.langid.detect_scripts>` reports
  ``Hani``, ``Jpan`` and ``Kore``, so :data:`DETECTED_AS` expands those codes. A short Japanese
  string of kanji only (``設定``) is ``Hani`` and still a Japanese script.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

# lid.176 (Wikipedia) code -> the CLDR code of the same language, or its scripts outright
WIKIPEDIA_CODES: dict[str, str] = {
    "als": "gsw",  # Alemannic (Wikipedia als.), not ISO 639-3 als (Tosk Albanian)
    "eml": "egl",  # Emilian-Romagnol: ISO retired eml for egl (Emilian) and rgn (Romagnol)
    "nah": "nhe",  # Nahuatl (a macro-family in ISO): Eastern Huasteca Nahuatl, Latin script
    "bh": "bho",  # Bihari (a collective code): Bhojpuri, its largest member
}
EXTRA_SCRIPTS: dict[str, tuple[str, ...]] = {
    "sh": ("Latn", "Cyrl"),  # Serbo-Croatian: CLDR only aliases it to sr_Latn
}
# CLDR script subtag -> the codes detect_scripts() may report for text in it
DETECTED_AS: dict[str, tuple[str, ...]] = {
    "Hans": ("Hani",),
    "Hant": ("Hani",),
    "Hanb": ("Hani", "Bopo"),
    "Jpan": ("Jpan", "Hani", "Hira", "Kana"),
    "Kore": ("Kore", "Hang", "Hani"),
}


@cache
def _cldr_scripts() -> dict[str, frozenset[str]]:
    """CLDR language -> scripts named by any of its likely-subtag expansions."""
    from babel.core import get_global

    out: dict[str, set[str]] = {}
    for value in get_global("likely_subtags").values():
        parts = value.split("_")
        if len(parts) >= 2 and len(parts[1]) == 4:
            out.setdefault(parts[0], set()).add(parts[1])
    return {lang: frozenset(s) for lang, s in out.items()}


def _expand(scripts: Iterable[str]) -> frozenset[str]:
    return frozenset(code for s in scripts for code in DETECTED_AS.get(s, (s,)))


@cache
def language_scripts(lang: str) -> frozenset[str]:
    """ISO 15924 codes of the scripts ``lang`` is written in (empty if CLDR does not know it,
    in which case no script check applies)."""
    if lang in EXTRA_SCRIPTS:
        return _expand(EXTRA_SCRIPTS[lang])
    from babel.core import get_global

    table = _cldr_scripts()
    code = WIKIPEDIA_CODES.get(lang, lang)
    if code not in table:  # a deprecated code: CLDR's alias (mhr -> chm, sh -> sr_Latn, ...)
        alias = get_global("language_aliases").get(code)
        if alias:
            parts = alias.split("_")
            if len(parts) >= 2 and len(parts[1]) == 4:
                return _expand([parts[1]])
            code = parts[0]
    return _expand(table.get(code, ()))


def script_table(langs: Iterable[str]) -> dict[str, frozenset[str]]:
    """``language_scripts`` for several languages at once."""
    return {lang: language_scripts(lang) for lang in langs}


def unique_script_languages(langs: Iterable[str], detectable: Iterable[str]) -> dict[str, str]:
    """Detectable script -> the one language of ``langs`` written in it, for scripts that exactly
    one of them uses (Greek -> el, Thai -> th, Hangul -> ko among lid.176's languages)."""
    users: dict[str, set[str]] = {}
    for lang in langs:
        for script in language_scripts(lang):
            users.setdefault(script, set()).add(lang)
    wanted = set(detectable)
    return {s: next(iter(u)) for s, u in sorted(users.items()) if len(u) == 1 and s in wanted}
