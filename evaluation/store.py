"""The predictions bundle: every scored run of an experiment in three small files that can be
committed (under ``docs/results/predictions/``) and from which the report rebuilds exactly
(``python -m evaluation.report docs/results/predictions --out docs/results``).

* ``classification.parquet``: one row per (run, split, language, item, perturbation,
  severity) with the report's columns (``variant, run_key, method, seed, protocol, split,
  lang, item_id, key, overlap_controlled, perturbation, severity, corruption, gold,
  logits``); strings dictionary-encoded, logits float32 log-probabilities, zstd;
* ``translation.parquet``: one row per (run, direction, item) with source, reference and
  hypothesis;
* ``footprints.json``: one object per run (the trainer's footprint plus its per-step times)
  and ``meta.json`` (experiment, settings, the header of the report).

``python -m evaluation.store pack EVALUATIONS_DIR OUT`` packs the per-run files that
``model_evaluation`` writes (``<variant>/<run>.parquet`` with ``.footprint.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.frames import parse_run

__all__ = ["load_bundle", "load_scored_runs", "main", "pack", "write_bundle"]


def load_scored_runs(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every ``<variant>/<run>.parquet`` under ``folder`` -> classification rows, translation
    rows and footprints, each tagged with variant, run key, method and seed."""
    cls, mt, foot = [], [], []
    for path in sorted(Path(folder).glob("*/*.parquet")):
        variant, run = path.parent.name, path.stem
        task, protocol, method, seed = parse_run(run)
        tags = {"variant": variant, "run_key": run, "method": method, "seed": seed}
        df = pd.read_parquet(path).assign(**tags)
        if task == "classification" and "protocol" not in df.columns:
            df["protocol"] = protocol
        (cls if task == "classification" else mt).append(df)
        fp = path.with_suffix(".footprint.json")
        if fp.is_file():
            foot.append({**json.loads(fp.read_text()), **tags, "task": task})
    if not cls:
        raise FileNotFoundError(f"no scored classification run under {folder}")
    return (
        pd.concat(cls, ignore_index=True),
        pd.concat(mt, ignore_index=True) if mt else pd.DataFrame(),
        pd.DataFrame(foot),
    )


def _table(df: pd.DataFrame) -> pa.Table:
    df = df.copy()
    if "logits" in df.columns:
        df["logits"] = [list(map(float, z)) for z in df["logits"]]
    t = pa.Table.from_pandas(df, preserve_index=False)
    cols = []
    for name in t.column_names:
        col = t.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = col.dictionary_encode()
        elif name == "logits":
            col = col.cast(pa.list_(pa.float32()))
        cols.append(col)
    return pa.table(cols, names=t.column_names)


def write_bundle(
    out: str | Path,
    cls: pd.DataFrame,
    mt: pd.DataFrame | None,
    footprints: pd.DataFrame | None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle's files under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(cls), out / "classification.parquet", compression="zstd")
    if mt is not None and len(mt):
        pq.write_table(_table(mt), out / "translation.parquet", compression="zstd")
    recs = [] if footprints is None else json.loads(footprints.to_json(orient="records"))
    (out / "footprints.json").write_text(json.dumps(recs, indent=1))
    (out / "meta.json").write_text(json.dumps(meta or {}, indent=2, default=str))
    return out


def load_bundle(folder: str | Path):
    """``(classification, translation, footprints, meta)`` of a bundle."""
    folder = Path(folder)
    cls = pd.read_parquet(folder / "classification.parquet")
    for c in cls.columns:
        if isinstance(cls[c].dtype, pd.CategoricalDtype):
            cls[c] = cls[c].astype(str)
    mt_path = folder / "translation.parquet"
    mt = pd.read_parquet(mt_path) if mt_path.is_file() else pd.DataFrame()
    for c in mt.columns:
        if isinstance(mt[c].dtype, pd.CategoricalDtype):
            mt[c] = mt[c].astype(str)
    fp_path = folder / "footprints.json"
    fp = pd.DataFrame(json.loads(fp_path.read_text())) if fp_path.is_file() else pd.DataFrame()
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return cls, mt, fp, meta


def pack(evaluations: str | Path, out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Bundle the per-run prediction files of one experiment."""
    cls, mt, fp = load_scored_runs(evaluations)
    return write_bundle(out, cls, mt, fp, meta)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.store")
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="bundle <variant>/<run>.parquet files")
    pk.add_argument("evaluations")
    pk.add_argument("out")
    pk.add_argument("--meta", help="JSON object stored as meta.json (settings, header)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    out = pack(args.evaluations, args.out, json.loads(args.meta) if args.meta else None)
    print(json.dumps({"bundle": str(out)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
