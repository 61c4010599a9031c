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
    ap.add_argument("--budgets", help="token budgets of the one-pass arm (default batch x length)")
    ap.add_argument("--no-before", action="store_true", help="only the one-pass arms")
    ap.add_argument("--mt-data", help="a tasks/translation.parquet: also time translation")
    ap.add_argument("--mt-pairs", type=int, default=0, help="pairs per direction")
    ap.add_argument("--mt-lang", default="de")
    ap.add_argument("--max-new-tokens", type=int, default=24)
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
    default = args.batch_size * args.max_length
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [default]
    pads = {b: _padding(tok, task, texts, args.max_length, b, args.batch_size) for b in budgets}
    pad_old, _, n_unique = pads[budgets[0]]

    arms = {}
    pad_of = {}
    if not args.no_before:
        arms["before: score_classification per pass"] = lambda: _before(
            net, tok, task, rows, args.batch_size, args.max_length)  # fmt: skip
        pad_of["before: score_classification per pass"] = pad_old
    for b in budgets:
        pad_of[f"after: class_log_probs, one pass, {b} tokens"] = pads[b][1]
        arms[f"after: class_log_probs, one pass, {b} tokens"] = lambda b=b: class_log_probs(
            net, tok, task, texts, args.max_length, b
        )
    warm = texts[: min(len(texts), 2 * args.batch_size)]
    class_log_probs(net, tok, task, warm, args.max_length, default)
    times: dict[str, list[float]] = {k: [] for k in arms}
    results = {}
    for _ in range(args.rounds):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    ref = results[next(iter(arms))]
    diff = max(float(np.abs(ref - r).max()) for r in results.values())
    n = len(rows)
    print(
        f"model {args.model}, {n} items ({n_unique} distinct prompts), {args.threads} threads,"
        f" batch {args.batch_size}, max_length {args.max_length}, {args.rounds} rounds"
    )
    print()
    print("| scorer | s (best) | items/s | padded tokens | ratio |")
    print("|---|---|---|---|---|")
    base = min(times[next(iter(arms))])
    for name, ts in times.items():
        t = min(ts)
        print(f"| {name} | {t:.2f} | {n / t:.1f} | {pad_of[name]:.1%} | {base / t:.2f} |")
    print()
    print(f"max |log p(before) - log p(after)| = {diff:.2e}")
    ok = diff < 1e-3
    if args.mt_data and args.mt_pairs:
        ok &= _translation(net, tok, args)
    return 0 if ok else 1


def _translation(net, tok, args) -> bool:
    """Greedy translation with the first-line stop against full-length generation on the same
    pairs: the same hypotheses, the time of each."""
    from evaluation import predict as pr
    from training.data import DEFAULT_MT_TEMPLATE, read_records

    recs = [r for r in read_records(args.mt_data) if r["split"] == "devtest"]
    recs = [dict(r, direction=f"{r['src_lang']}-{r['tgt_lang']}") for r in recs
            if {r["src_lang"], r["tgt_lang"]} == {"en", args.mt_lang}]  # fmt: skip
    pairs, _ = pr.parallel_sample(recs, args.mt_pairs, 0, group="direction", stratum="domain")
    out = {}
    for name, stop in (("full length", False), ("first-line stop", True)):
        saved = pr._newline_stop
        if not stop:  # the previous decoding: every row runs to max_new_tokens
            from transformers import StoppingCriteriaList

            pr._newline_stop = lambda tokenizer, start: StoppingCriteriaList()
        t0 = time.perf_counter()
        hyps = pr.generate_translations(net, tok, pairs, DEFAULT_MT_TEMPLATE, 16,
                                        args.max_length, args.max_new_tokens)  # fmt: skip
        out[name] = (time.perf_counter() - t0, hyps)
        pr._newline_stop = saved
    same = out["full length"][1] == out["first-line stop"][1]
    print()
    print(f"translation en<->{args.mt_lang}, {len(pairs)} pairs, max_new_tokens "
          f"{args.max_new_tokens}: identical hypotheses: {same}")  # fmt: skip
    print()
    print("| decoding | s | pairs/s | ratio |")
    print("|---|---|---|---|")
    base = out["full length"][0]
    for name, (t, _) in out.items():
        print(f"| {name} | {t:.1f} | {len(pairs) / t:.2f} | {base / t:.2f} |")
    return same


if __name__ == "__main__":
    sys.exit(main())
