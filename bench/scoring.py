"""Classification scoring throughput: the one-pass scorer of ``evaluation/predict.py`` against the
scorer it replaced, in one process, on the same items.

    python bench/scoring.py [--model tiny|gemma-3-270m|PATH] [--data classification.parquet]
                            [--test-per-lang 40] [--rounds 2]

(run gemma under ``flock /tmp/govtune-heavy.lock`` on the shared machine; the script sets the
allocator variables of shared/REFERENCES.md "Benchmark hygiene on CPU" and re-executes itself).

The items are what ``model_evaluation`` scores with the given sample sizes: dev and clean test
items of every language plus the perturbed test copies (``evaluation.predict._item_rows``), from
real task data (``--data``: a ``tasks/classification.parquet``) or the synthetic set.

* **before**: the previous scorer, one ``training.data.score_classification`` call per pass
  (dev, clean test, then each perturbation x severity), items in sample order, ``batch_size``
  items per batch padded to the longest, autograd off only because the weights are frozen;
* **after**: ``evaluation.predict.class_log_probs`` on every item at once: identical prompts
  once, batches sorted by length under a token budget, ``inference_mode``.

Both arms run in alternation (``--rounds``), each after a short warm-up; the table gives items/s
per arm, the ratio, padded-token share and the largest log-probability difference between arms
(they must agree).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}


def _load(model: str, records: list[dict], models_dir: str | None):
    from training.data import choose_verbalizers
    from training.models import SHIPPED_MODELS, load_causal_lm, tiny_llama
    from training.tasks import CANDIDATE_VERBALISERS

    if model == "tiny":
        texts = [f"{r['text']} {r['label']} {r['lang']}" for r in records]
        net, tok = tiny_llama(texts=texts, seed=0)
    else:
        path = model
        if model in SHIPPED_MODELS and models_dir:
            path = str(Path(models_dir) / model)
        net, tok = load_causal_lm(path)
    for p in net.parameters():  # as a loaded run is: nothing trains while scoring
        p.requires_grad_(False)
    net.eval()
    labels = sorted({r["label"] for r in records if r.get("label")})
    task = choose_verbalizers(labels, tok, candidates=CANDIDATE_VERBALISERS)
    return net, tok, task


def _before(net, tok, task, rows, batch_size, max_length):
    """The previous predict_classification loop: one score_classification call per pass."""
    import numpy as np

    from training.data import score_classification

    out = np.zeros((len(rows), len(task.labels)), dtype=np.float32)
    passes: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        passes.setdefault((r["split"], r["perturbation"], r["severity"]), []).append(i)
    for idx in passes.values():
        items = [{"text": rows[i]["text"], "label": task.labels[rows[i]["gold"]],
                  "lang": rows[i]["lang"], "id": rows[i]["item_id"]} for i in idx]  # fmt: skip
        probs = score_classification(net, tok, items, task, batch_size, max_length)
        out[idx] = np.log(np.clip(probs, 1e-12, None))
    return out


def _padding(tok, task, texts, max_length, budget, batch_size):
    from evaluation.predict import _batches, _encode

    ids = _encode(tok, texts, task.template, max_length)
    lens = [len(x) for x in ids]
    real = sum(lens)
    old = sum(max(lens[i : i + batch_size]) * len(lens[i : i + batch_size])
              for i in range(0, len(lens), batch_size))  # fmt: skip
    uniq = sorted({tuple(x) for x in ids}, key=len)
    ulens = [len(x) for x in uniq]
    new = sum(max(ulens[i] for i in b) * len(b) for b in _batches(ulens, budget))
    return 1 - real / old, 1 - sum(ulens) / new, len(uniq)


def main() -> int:
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--models-dir", default=str(ROOT / ".govtune" / "models"))
    ap.add_argument("--data", help="a tasks/classification.parquet (default: synthetic records)")
    ap.add_argument("--test-per-lang", type=int, default=40)
    ap.add_argument("--dev-per-lang", type=int, default=20)
    ap.add_argument("--robust-items", type=int, default=12)
    ap.add_argument("--robust-langs", default="fr,ru")
    ap.add_argument("--severities", default="0.05,0.15")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from evaluation.predict import PredictConfig, RobustnessSpec, _item_rows, class_log_probs
    from training.data import read_records, synthetic_classification_records

    torch.set_num_threads(args.threads)
    records = (
        read_records(args.data)
        if args.data
        else synthetic_classification_records(n_per_class=40, langs=("en", "de", "fr"))
    )
    net, tok, task = _load(args.model, records, args.models_dir)
    spec = RobustnessSpec(
        severities=[float(s) for s in args.severities.split(",")],
        langs=args.robust_langs.split(","),
        items_per_lang=args.robust_items,
    )
    cfg = PredictConfig(run_dir="", data=args.data or "", out="", test_per_lang=args.test_per_lang,
                        dev_per_lang=args.dev_per_lang, robustness=spec,
                        batch_size=args.batch_size, max_length=args.max_length)  # fmt: skip
    rows = _item_rows(records, task.labels, cfg)
    texts = [r["text"] for r in rows]
    budget = args.batch_size * args.max_length
    pad_old, pad_new, n_unique = _padding(tok, task, texts, args.max_length, budget,
                                          args.batch_size)  # fmt: skip

    def after():
        return class_log_probs(net, tok, task, texts, args.max_length, budget)

    def before():
        return _before(net, tok, task, rows, args.batch_size, args.max_length)

    warm = texts[: min(len(texts), 2 * args.batch_size)]
    class_log_probs(net, tok, task, warm, args.max_length, budget)
    times: dict[str, list[float]] = {"before": [], "after": []}
    results = {}
    for _ in range(args.rounds):
        for name, fn in (("before", before), ("after", after)):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    diff = float(np.abs(results["before"] - results["after"]).max())
    n = len(rows)
    print(
        f"model {args.model}, {n} items ({n_unique} distinct prompts), {args.threads} threads,"
        f" batch {args.batch_size}, max_length {args.max_length}, {args.rounds} rounds"
    )
    print()
    print("| scorer | s (best) | items/s | padded tokens | ratio |")
    print("|---|---|---|---|---|")
    b, a = min(times["before"]), min(times["after"])
    rows_out = [
        ("before: score_classification per pass", b, pad_old, 1.0),
        ("after: class_log_probs, one pass", a, pad_new, b / a),
    ]
    for label, t, pad, ratio in rows_out:
        print(f"| {label} | {t:.2f} | {n / t:.1f} | {pad:.1%} | {ratio:.2f} |")
    print()
    print(f"max |log p(before) - log p(after)| = {diff:.2e}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
