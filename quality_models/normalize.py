"""Text normalisation: terminal escapes, Unicode form, mojibake repair, control characters and
whitespace.

Each change is recorded per document (``changes``) so a reviewer can see what normalisation
did. A document that is empty after normalisation goes to the ledger.

Terminal escape sequences (ANSI colours in logs, man pages rendered with escapes, captured
terminal output) are removed whole, before control characters are stripped: stripping only the
ESC byte would leave ``[33m`` in the text. The patterns cover ECMA-48 CSI (ftfy's
``remove_terminal_escapes`` handles only ``ESC [`` digits ``;`` letter), OSC (titles,
hyperlinks), charset designations and two-character escapes. Remnants of codes whose ESC was
already lost upstream are removed too where the form is unmistakable: caret (``^[[33m``) and
symbol (``␛[33m``) notation, and bare colour codes (``[1;31m``, not ``[5m]``); they are counted
separately (``terminal_escape_remnants_removed``) so a reviewer can audit that rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import ftfy
import numpy as np
import pyarrow as pa

from .config import NormalizeConfig
from .contract import StageResult, split_by_mask

# C0/C1 controls except tab and newline (kept as structure), plus lone surrogates and BOM
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")
# 7-bit forms only: the 8-bit C1 introducers (U+009B, U+009D) are nearly always mojibake (the
# latin-1 reading of a UTF-8 continuation byte: "ě" is C4 9B), which ftfy must still see whole
_TERMINAL_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours (SGR), cursor moves, erase, modes
    r"|\x1b\][^\x07\x1b]{0,2048}(?:\x07|\x1b\\)"  # OSC (titles, hyperlinks), terminated
    r"|\x1b[()*+][ -~]"  # charset designation (ESC ( B)
    r"|\x1b[ -~]"  # any other two-character escape (ESC 7, ESC c, ESC =, ...)
)
# the ESC is gone: caret or symbol notation of any CSI, or a bare colour code (SGR) whose
# parameters are digits; "[5m]" (five metres) is text
_ESCAPE_REMNANT = re.compile(
    r"(?:\^\[|\u241b)\[[0-?]*[ -/]*[@-~]"
    r"|\ufffd?\[\d{1,3}(?:;\d{1,3})*m(?!\])"
)


def normalize_text(text: str, config: NormalizeConfig | None = None) -> tuple[str, list[str]]:
    """Normalise one text; return it and the list of change kinds applied."""
    config = config or NormalizeConfig()
    changes: list[str] = []
    out = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x1b" in out:
        cleaned = _TERMINAL_ESCAPE.sub("", out)
        if cleaned != out:
            changes.append("terminal_escapes_removed")
            out = cleaned
    if "[" in out:
        cleaned = _ESCAPE_REMNANT.sub("", out)
        if cleaned != out:
            changes.append("terminal_escape_remnants_removed")
            out = cleaned
    if config.fix_mojibake:
        fixed = ftfy.fix_encoding(out)
        if fixed != out:
            changes.append("mojibake_fixed")
            out = fixed
    stripped = _CONTROL.sub("", out)
    if stripped != out:
        changes.append("control_chars_removed")
        out = stripped
    form = unicodedata.normalize(config.unicode_form, out)
    if form != out:
        changes.append(f"unicode_{config.unicode_form.lower()}")
        out = form
    if config.collapse_whitespace:
        spaced = "\n".join(_SPACES.sub(" ", line).strip() for line in out.split("\n"))
        spaced = _NEWLINES.sub("\n\n", spaced).strip()
        if spaced != out:
            changes.append("whitespace")
            out = spaced
    return out, changes


def normalize_stage(table: pa.Table, config: NormalizeConfig | None = None) -> StageResult:
    config = config or NormalizeConfig()
    texts = table.column("text").to_pylist()
    new_texts: list[str] = []
    counts: Counter[str] = Counter()
    for t in texts:
        out, changes = normalize_text(t, config)
        new_texts.append(out)
        counts.update(changes)
    keep = np.array([bool(t) for t in new_texts], dtype=bool)
    reasons = ["empty_after_normalize"] * len(new_texts)
    # the ledger keeps the original text (the normalised one is empty)
    _, rejected = split_by_mask(table, keep, "normalize", reasons)
    idx = table.column_names.index("text")
    normalized = table.set_column(idx, "text", pa.array(new_texts, pa.string()))
    kept = normalized.filter(pa.array(keep))
    meta = {"changes": dict(sorted(counts.items())), "unicode_form": config.unicode_form}
    return StageResult(kept, rejected, meta)
