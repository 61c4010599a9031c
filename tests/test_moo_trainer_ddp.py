"""The trainer's MOO under torchrun: 2 gloo processes, the DDP communication hook, one solve per
accumulated step.

The run trains the tiny Llama in full (so the trainable parameters span several buckets at a
0.1 MB cap) with plain SGD, so the update each step applied is exactly ``(theta_s -
theta_{s+1}) / lr`` from its checkpoints. The reference recomputes, in this process, every
language's gradient of its loss over the *global* step (both ranks, both micro-batches) and solves
MGDA per bucket (the buckets the hook reports): the applied update must equal it, and must differ
from what the trainer used to do (each rank solving on its own language gradients, then the
results averaged).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from launch import TORCHRUN, train_under_torchrun
from safetensors.torch import load_file

from training.models import load_causal_lm
from training.moo import mgda_weights
from training.moo_ddp import allreduce_bytes
from training.trainer import StepSampler, TrainConfig, load_task_records, prepare_task

WORLD, ACCUM, BATCH, LR, STEPS = 2, 2, 4, 0.1, 2


def _config(run_dir: Path) -> dict:
    return {
        "run_dir": str(run_dir),
        "model": "tiny",
        "data": "synthetic",
        "method": {"name": "full"},
        "moo": "mgda",
        "moo_scope": "bucket",
        "moo_normalization": "none",
        "bucket_cap_mb": 0.1,
        "optimizer": "sgd",
        "lr": LR,
        "max_grad_norm": None,
        "steps": STEPS,
        "batch_size": BATCH,
        "grad_accum": ACCUM,
        "checkpoint_every": 1,
        "keep_checkpoints": STEPS + 1,
        "threads": 1,
        "progress": False,
        "eval_max_examples": 8,
    }


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TORCHRUN.is_file():
        pytest.skip("torchrun is not installed next to this Python")
    tmp = tmp_path_factory.mktemp("moo_trainer_ddp")
    run = tmp / "run"
    train_under_torchrun(_config(run), tmp / "cfg.yaml", nproc=WORLD)
    return run


def _weights(run: Path, step: int, names: list[str]) -> list[torch.Tensor]:
    if step == 0:
        model, _ = load_causal_lm(run / "base")
        state = dict(model.named_parameters())
        return [state[n].detach().clone() for n in names]
    state = load_file(str(run / "checkpoints" / f"step_{step:07d}" / "adapter.safetensors"))
    return [state[n] for n in names]


def _lang_grads(model, params, data, cfg, examples_by_lang, totals):
    """Gradient of each language's loss over the given rows (token-weighted over ``totals``)."""
    from training.data import example_losses

    out = {}
    for lang, groups in examples_by_lang.items():
        loss = 0.0
        for rows in groups:
            losses, counts = example_losses(model, data.collate(rows), cfg.cls_loss)
            loss = loss + (losses * counts).sum() / totals[lang]
        out[lang] = torch.autograd.grad(loss, params)
    return out


def _bucket_mgda(grads: dict, langs: list[str], groups: list[list[int]], n: int) -> list:
    out = [None] * n
    for members in groups:
        stacked = [torch.cat([grads[lang][i].reshape(-1) for i in members]) for lang in langs]
        g = torch.stack(stacked).double()
        w = mgda_weights((g @ g.T).numpy())
        combined = torch.as_tensor(w) @ g
        off = 0
        for i in members:
            numel = grads[langs[0]][i].numel()
            out[i] = combined[off : off + numel].view_as(grads[langs[0]][i]).float()
            off += numel
    return out


def test_applied_update_is_bucket_mgda_of_the_global_language_gradients(ddp_run: Path) -> None:
    cfg = TrainConfig.from_dict(_config(ddp_run))
    model, tok = load_causal_lm(ddp_run / "base")
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    data = prepare_task(cfg, tok, load_task_records(cfg))
    samplers = [StepSampler(len(data.train), cfg.seed, BATCH, ACCUM, WORLD, r) for r in range(2)]
    records = [json.loads(x) for x in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    diags = {r["step"]: r["moo"] for r in records if "moo" in r}
    assert sorted(diags) == list(range(1, STEPS + 1))

    for step in range(STEPS):
        diag = diags[step + 1]
        groups = [g["params"] for g in diag["groups"]]
        assert len(groups) > 1  # the cap really splits the model into buckets
        assert sorted(i for g in groups for i in g) == list(range(len(params)))
        assert diag["world_size"] == WORLD and diag["combined"] == "ddp-hook"
        assert diag["gradients"] == "split"  # full fine-tuning trains RMSNorm weights too
        langs = diag["languages"]
        numel = sum(p.numel() for p in params)
        assert diag["bytes_allreduced"] == allreduce_bytes(numel, len(langs), "exact")["moo"]

        before, after = _weights(ddp_run, step, names), _weights(ddp_run, step + 1, names)
        applied = [(a - b) / LR for a, b in zip(before, after, strict=True)]
        with torch.no_grad():
            for p, w in zip(params, before, strict=True):
                p.copy_(w)

        micro = {
            r: [[data.train[i] for i in samplers[r].indices(step, m)] for m in range(ACCUM)]
            for r in range(WORLD)
        }
        global_rows, rank_rows, totals, rank_totals = {}, {}, {}, {}
        for r in range(WORLD):
            for rows in micro[r]:
                for lang in langs:
                    mine = [e for e in rows if e["lang"] == lang]
                    if mine:
                        global_rows.setdefault(lang, []).append(mine)
                        rank_rows.setdefault(r, {}).setdefault(lang, []).append(mine)
                        totals[lang] = totals.get(lang, 0) + len(mine)
                        mine_total = rank_totals.setdefault(r, {})
                        mine_total[lang] = mine_total.get(lang, 0) + len(mine)
        assert sorted(totals) == langs

        reference = _bucket_mgda(
            _lang_grads(model, params, data, cfg, global_rows, totals), langs, groups, len(params)
        )
        scale = max(r.abs().max().item() for r in reference)
        err = max((a - r).abs().max().item() for a, r in zip(applied, reference, strict=True))
        assert err <= 1e-4 * scale, (step, err, scale)

        # the per-language losses of the diagnostics are the global ones
        from training.data import example_losses

        with torch.no_grad():
            for lang, value in zip(langs, diag["losses"], strict=True):
                tot = sum(
                    (lambda lo_c: (lo_c[0] * lo_c[1]).sum().item())(
                        example_losses(model, data.collate(rows), cfg.cls_loss)
                    )
                    for rows in global_rows[lang]
                )
                assert value == pytest.approx(tot / totals[lang], rel=1e-5)

        # what the trainer did before: MGDA on each rank's own gradients, averaged afterwards
        per_rank = []
        for r in range(WORLD):
            rows = {lang: rank_rows[r][lang] for lang in langs if lang in rank_rows[r]}
            grads = _lang_grads(model, params, data, cfg, rows, rank_totals[r])
            per_rank.append(_bucket_mgda(grads, sorted(grads), groups, len(params)))
        averaged = [(a + b) / 2 for a, b in zip(*per_rank, strict=True)]
        gap = max((a - r).abs().max().item() for a, r in zip(applied, averaged, strict=True))
        assert gap > 100 * max(err, 1e-7 * scale), (step, gap, err)


def test_world_size_enters_the_run_fingerprint(ddp_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(ddp_run, copy)
    cfg = _config(copy)
    cfg["steps"] = STEPS  # same length: only the world size differs (1 process now)
    from training.trainer import train

    with pytest.raises(ValueError, match="2 process\\(es\\); this one has 1"):
        train(TrainConfig.from_dict(cfg))
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert summary["placement"]["world_size"] == WORLD
    assert summary["fingerprint"] == TrainConfig.from_dict(_config(ddp_run)).fingerprint()


def _torchrun(cfg: dict, tmp: Path, name: str) -> Path:
    train_under_torchrun(cfg, tmp / f"{name}.yaml", nproc=WORLD)
    return Path(cfg["run_dir"])


def test_one_backward_capture_under_ddp_equals_the_split_passes(tmp_path: Path) -> None:
    """LoRA: the per-language gradients built locally from one mixed backward and handed to
    the hook in one synced zero-loss pass give the update of K DDP passes (split)."""
    if not TORCHRUN.is_file():
        pytest.skip("torchrun is not installed next to this Python")
    runs = {}
    for mode in ("split", "capture"):
        cfg = _config(tmp_path / mode)
        cfg.update(method={"name": "lora", "dropout": 0.0}, moo_gradients=mode, steps=3,
                   keep_checkpoints=4, bucket_cap_mb=0.005, moo_normalization="l2")  # fmt: skip
        runs[mode] = _torchrun(cfg, tmp_path, mode)

    def diags(run):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["moo"] for r in lines if "moo" in r]

    split, capture = diags(runs["split"]), diags(runs["capture"])
    assert [d["gradients"] for d in capture] == ["split", "capture", "capture"]  # step 1: DDP
    assert {d["combined"] for d in capture} == {"ddp-hook"}  # forms its buckets first
    assert len(capture[-1]["groups"]) > 1
    for a, b in zip(capture, split, strict=True):
        assert a["bytes_allreduced"] == b["bytes_allreduced"]
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
        for ga, gb in zip(a["groups"], b["groups"], strict=True):
            assert ga["params"] == gb["params"]
            assert ga["alpha"] == pytest.approx(gb["alpha"], abs=1e-4)
    for step in (2, 3):
        name = f"step_{step:07d}/adapter.safetensors"
        a = load_file(str(runs["capture"] / "checkpoints" / name))
        b = load_file(str(runs["split"] / "checkpoints" / name))
        assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in b)
