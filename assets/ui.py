"""How assets show themselves in the Dagster UI: small inline plots, sample tables, column
schemas and rounded numbers.

The UI renders a Markdown metadata value inline only when it is short (under 1,000 characters;
longer ones hide behind "[Show Markdown]"), so inline plots are tiny palette PNGs drawn directly
(a few hundred bytes), with their scale in words beside them; the full-size figures stay files
on disk (a `path` entry) and, for the reports, a Markdown entry a click away.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import pyarrow as pa
from PIL import Image, ImageDraw

INLINE_LIMIT = 990  # characters of Markdown the UI still renders inline
SAMPLE_TEXT_CHARS = 120
_INK, _PAPER, _ACCENT = (79, 67, 221), (255, 255, 255), (200, 60, 60)

# what each contract column means (DESIGN §2), shown in the UI's column schema
COLUMN_DESCRIPTIONS = {
    "doc_id": "stable id: hash of the source's relative path + record position",
    "source": "<namespace>:<path relative to the input root>",
    "text": "the document, NFC, control characters and terminal escapes removed",
    "declared_lang": "the language the source claims (catalogue locale, JSONL lang), or null",
    "lang": "language (as lid.176 names it), the partition the document is in",
    "script": "dominant ISO 15924 script",
    "lang_score": "fastText confidence of the predicted language",
    "lid_decision": "how the language was decided (prediction, declaration, or both)",
    "content_hash": "hash of the normalised text (exact dedup)",
    "dup_cluster": "doc_id of the kept representative of its duplicate cluster",
    "dup_cluster_size": "size of that cluster (the rehydrate arm up-weights by it)",
    "perplexity": "KenLM perplexity under the language's model",
    "quality_bucket": "CCNet head / middle / tail",
    "quality_signals": "JSON of every heuristic measurement behind the quality decision",
    "label": "task pool: the message's program (the classification label)",
    "key": "task pool: the source message (the same item in every language)",
    "group": "task pool: its near-duplicate group (kept in one split)",
    "split": "task pool: train",
    "flag": "task pool: the builder's first problem with the message ('' = clean)",
    "pool_id": "task pool: the builder's own id of the row",
}


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats rounded to `digits` significant digits, recursively (UI metadata is read, not
    computed with: 0.10000000149011612 reads as 0.1)."""
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0:
            return value
        return round(value, max(0, digits - 1 - int(math.floor(math.log10(abs(value))))))
    if isinstance(value, Mapping):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(
        buf, format="PNG", optimize=True
    )
    return base64.b64encode(buf.getvalue()).decode()


def _inline(name: str, image: Image.Image, caption: str) -> dg.MetadataValue:
    md = f"![{name}](data:image/png;base64,{_png(image)}) {caption}"
    if len(md) > INLINE_LIMIT:  # too detailed to stay inline: shrink, then fall back to words
        small = image.resize((max(image.width // 2, 16), max(image.height // 2, 8)))
        md = f"![{name}](data:image/png;base64,{_png(small)}) {caption}"
    return dg.MetadataValue.md(md if len(md) <= INLINE_LIMIT else caption)


def bars(values: Sequence[float], width: int = 160, height: int = 36) -> Image.Image:
    """A tiny bar chart (a histogram's counts, a value per layer)."""
    image = Image.new("RGB", (width, height), _PAPER)
    draw = ImageDraw.Draw(image)
    values = [max(float(v), 0.0) for v in values] or [0.0]
    top = max(values) or 1.0
    step = width / len(values)
    for i, v in enumerate(values):
        h = max(1, round((height - 1) * v / top)) if v > 0 else 0
        x0 = round(i * step)
        x1 = max(x0, round((i + 1) * step) - 2)
        if h:
            draw.rectangle([x0, height - h, x1, height - 1], fill=_INK)
    return image


def line(values: Sequence[float], width: int = 160, height: int = 36) -> Image.Image:
    """A tiny line chart (a loss curve), its last point marked."""
    image = Image.new("RGB", (width, height), _PAPER)
    draw = ImageDraw.Draw(image)
    pts = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(pts) < 2:
        return image
    lo, hi = min(pts), max(pts)
    span = (hi - lo) or 1.0
    xy = [
        (round(i * (width - 4) / (len(pts) - 1)) + 2, round(2 + (height - 5) * (hi - v) / span))
        for i, v in enumerate(pts)
    ]
    draw.line(xy, fill=_INK, width=1)
    x, y = xy[-1]
    draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=_ACCENT)
    return image


def histogram(counts: Sequence[int], edges: Sequence[float], what: str) -> dg.MetadataValue:
    """An inline histogram with its range and count in words."""
    n = int(sum(counts))
    if not n:
        return dg.MetadataValue.md(f"no {what} values")
    caption = f"{what}: {rounded(float(edges[0]), 3)} … {rounded(float(edges[-1]), 3)}, n={n}"
    return _inline(what, bars(counts), caption)


def curve(values: Sequence[float], what: str) -> dg.MetadataValue:
    """An inline curve with its first and last value in words."""
    pts = [float(v) for v in values if v is not None]
    if not pts:
        return dg.MetadataValue.md(f"no {what} values")
    caption = f"{what}: {rounded(pts[0], 3)} → {rounded(pts[-1], 3)} over {len(pts)} points"
    return _inline(what, line(pts), caption)


def per_item(values: Sequence[float], what: str) -> dg.MetadataValue:
    """An inline bar per item (a λ per layer), with the range in words."""
    pts = [float(v) for v in values]
    if not pts:
        return dg.MetadataValue.md(f"no {what} values")
    caption = f"{what}: {rounded(min(pts), 3)} … {rounded(max(pts), 3)} over {len(pts)}"
    return _inline(what, bars(pts), caption)


def labelled_bars(values: Sequence[float], caption: str, name: str) -> dg.MetadataValue:
    """Bars in row order with their labels and values in the caption (cut to stay inline)."""
    image = bars(values, width=min(40 * max(len(values), 1), 200), height=40)
    budget = INLINE_LIMIT - len(_png(image)) - len(name) - 40
    if len(caption) > budget:
        caption = caption[: max(budget - 1, 0)] + "…"
    return _inline(name, image, caption)


def _score(details: str) -> float | None:
    """The number a ledger row's decision turned on (a confidence, a Jaccard, a perplexity...)."""
    try:
        found = json.loads(details or "{}")
    except json.JSONDecodeError:
        return None
    for key in ("score", "est_jaccard", "jaccard", "perplexity", "threshold"):
        if isinstance(found.get(key), (int, float)):
            return float(found[key])
    numbers = [v for v in found.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(numbers[0]) if numbers else None


def rejected_sample(rejected: pa.Table, per_reason: int = 3, limit: int = 30) -> dg.MetadataValue:
    """A few ledger rows of each reason (doc_id, reason, score, the first characters)."""
    rows = []
    seen: dict[str, int] = {}
    for r in rejected.select(["doc_id", "reason", "details", "text"]).to_pylist():
        if seen.get(r["reason"], 0) >= per_reason:
            continue
        seen[r["reason"]] = seen.get(r["reason"], 0) + 1
        score = _score(r["details"])
        rows.append(
            dg.TableRecord(
                {
                    "doc_id": r["doc_id"],
                    "reason": r["reason"],
                    "score": rounded(score, 3) if score is not None else "",
                    "text": (r["text"] or "")[:SAMPLE_TEXT_CHARS].replace("\n", " ⏎ "),
                }
            )
        )
        if len(rows) >= limit:
            break
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("doc_id", "string"),
            dg.TableColumn("reason", "string"),
            dg.TableColumn("score", "float", description="what the decision turned on"),
            dg.TableColumn("text", "string", description="first 120 characters"),
        ]
    )
    return dg.MetadataValue.table(records=rows, schema=schema)


def kept_sample(table: pa.Table, limit: int = 10) -> dg.MetadataValue:
    """The first rows a stage kept (the columns people read)."""
    wanted = [c for c in ("doc_id", "lang", "lang_score", "perplexity", "quality_bucket", "label")
              if c in table.column_names]  # fmt: skip
    rows = []
    for r in table.slice(0, limit).select([*wanted, "text"]).to_pylist():
        shown = {k: (rounded(v, 3) if isinstance(v, float) else ("" if v is None else v))
                 for k, v in r.items() if k != "text"}  # fmt: skip
        shown["text"] = (r["text"] or "")[:SAMPLE_TEXT_CHARS].replace("\n", " ⏎ ")
        rows.append(dg.TableRecord(shown))
    columns = [dg.TableColumn(c, _type(table.schema.field(c).type)) for c in wanted]
    columns.append(dg.TableColumn("text", "string", description="first 120 characters"))
    return dg.MetadataValue.table(records=rows, schema=dg.TableSchema(columns=columns))


def _type(arrow_type: pa.DataType) -> str:
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    return "string"


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """The Arrow schema as the UI's column schema, with what each column means."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(f.name, str(f.type), description=COLUMN_DESCRIPTIONS.get(f.name))
            for f in schema
        ]
    )


def for_partition(
    results: Iterable[dg.AssetCheckResult], partition: str | None
) -> Iterator[dg.AssetCheckResult]:
    """The same check results, each naming the partition it judged (metadata ``partition`` and
    a description that starts with it), so a check's history is readable per partition."""
    name = str(partition) if partition is not None else "(unpartitioned)"
    for result in results:
        description = f"{name}: {result.description}" if result.description else name
        yield result._replace(
            metadata={"partition": name, **(result.metadata or {})}, description=description
        )
