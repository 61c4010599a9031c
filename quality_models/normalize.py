"""Text normalisation: Unicode form, mojibake repair, control characters and whitespace.

Each change is recorded per document (``changes``) so a reviewer can see what normalisation
did. A document that is empty after normalisation goes to the ledger.
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


def normalize_text(text: str, config: NormalizeConfig | None = None) -> tuple[str, list[str]]:
    """Normalise one text; return it and the list of change kinds applied."""
    config = config or NormalizeConfig()
    changes: list[str] = []
    out = text.replace("\r\n", "\n").replace("\r", "\n")
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
