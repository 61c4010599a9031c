"""Bucket-level MOO as a DistributedDataParallel communication hook.

Protocol per optimiser step (what :func:`ddp_moo_backward` does): every rank forwards and
backwards each language's sub-batch in turn, K passes in the same language order, with
``state.start_language(k)`` before each. By default the first K-1 passes run under
``no_sync()`` and leave their gradients in ``p.grad``, which :meth:`MooHookState.stash_grads`
moves aside; only the last pass goes through DDP, whose hook all-reduces, per bucket, the K x n
stack of the language gradients. With ``no_sync=False`` every pass goes through DDP and the
hook is called once per bucket per pass:

* languages ``0 .. K-2``: the hook copies the bucket's local gradient aside and hands DDP a
  zeroed bucket (no communication), so the next pass accumulates only its own language;
* in ``mode="exact"`` each language's bucket is all-reduced (asynchronously) as soon as its
  pass produces it, so that traffic overlaps the later passes;
* the last language: once its bucket is reduced too, every rank holds the same per-language
  bucket gradients averaged over ranks; each rank stacks them (K x n), builds the K x K Gram
  matrix, solves it (same input, same deterministic solver, same result on every rank) and
  returns ``sum_k alpha_k g_k``, which DDP writes into ``p.grad``.

Bytes all-reduced per step (fp32 gradients, n trainable parameters, K languages, G groups):

* plain DDP: n x 4 bytes of payload;
* ``exact`` (default): K x n x 4 + K x 8 (the K loss values in float64, needed by the ``loss``
  normalisation and the diagnostics), i.e. K times plain DDP;
* ``local_gram``: n x 4 + G x K^2 x 8 + K x 8: one K x K float64 Gram matrix per group (the
  mean of the ranks' local Gram matrices, an approximation of the Gram matrix of the mean
  gradient that ignores cross-rank terms), then the combined bucket: about plain DDP, but the
  result differs from the single-process computation.

A ring all-reduce moves 2 (R - 1) / R times its payload per rank in every case. The ``global``
scope all-reduces like ``exact`` but can solve only once all buckets have arrived
(:meth:`MooHookState.finish_step` writes ``p.grad``): the full-gradient rebuild that the
bucket scope avoids. The ``layer`` scope solves per layer inside each bucket (a layer split
across two buckets is solved as two groups). ``moo="none"`` averages the K local gradients and
all-reduces n x 4 bytes, exactly plain DDP on the language-balanced loss.

The single-process equivalent is :func:`training.moo.moo_backward` with the same bucket cap,
when DDP's rebuilt buckets follow reverse parameter order (:func:`training.moo.bucket_layout`).
Requirements: every language's forward uses every trainable parameter (no
``find_unused_parameters``), all ranks see every language, fp32 or bf16 gradients on one device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from training.moo import (
    MooConfig,
    check_finite_gram,
    group_diagnostics,
    param_gram,
    resolve_config,
    short_layer_keys,
    solve_group,
    span_label,
    summarize_groups,
)

HOOK_MODES = ("exact", "local_gram")


@dataclass
class MooHookState:
    """What the hook needs across calls: languages, config, parameter positions, per-step stash.

    Create it with :func:`register_moo_hook`. ``bytes_allreduced`` counts the payload bytes of
    the current step's all-reduces; ``layout`` records the parameter indices of each bucket as
    DDP formed them at the last language of the last step.
    """

    languages: list[str]
    config: MooConfig
    param_index: dict[int, int]
    params: list[torch.nn.Parameter]
    short_keys: list[str] | None = None
    mode: str = "exact"
    process_group: Any = None
    step: int = 0
    current: int = -1
    losses: list[float] | None = None
    bytes_allreduced: int = 0
    layout: dict[int, list[int]] = field(default_factory=dict)
    _stash: dict[int, list[tuple[torch.Tensor, Any]]] = field(default_factory=dict)
    _records: list[tuple[tuple[int, int], dict[str, Any], np.ndarray]] = field(default_factory=list)
    _global: list[tuple[list[int], list[int], torch.Tensor]] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.process_group)

    def set_languages(self, languages: Sequence[str]) -> None:
        """The languages of the coming step (in backward order; the same list on every rank).

        The trainer calls it every step with the languages that the step's global batch holds,
        so a language absent from a step is not an objective with a zero gradient (which would
        make MGDA's min-norm point zero)."""
        if self.current != -1:
            raise RuntimeError("set_languages() in the middle of a step")
        langs = list(languages)
        if not langs or len(set(langs)) != len(langs):
            raise ValueError(f"languages must be non-empty and distinct, got {langs}")
        self.languages = langs

    def start_language(self, k: int) -> None:
        """Announce that the next backward pass is language ``k`` (0 starts a new step)."""
        if not 0 <= k < len(self.languages):
            raise ValueError(f"language index {k} outside 0..{len(self.languages) - 1}")
        if k not in (0, self.current + 1):
            raise RuntimeError(
                f"languages must be backwarded in order; got {k} after {self.current}"
            )
        if k == 0:
            self._stash.clear()
            self._records.clear()
            self._global.clear()
            self.layout = {}
            self.losses = None
            self.bytes_allreduced = 0
        self.current = k

    def set_losses(self, local_losses: Sequence[float]) -> list[float]:
        """Average the K local loss values over ranks (one all-reduce of K floats) so that every
        rank normalises by the same numbers; call it before the last language's backward."""
        if len(local_losses) != len(self.languages):
            raise ValueError(f"expected {len(self.languages)} loss values, got {len(local_losses)}")
        t = torch.tensor([float(v) for v in local_losses], dtype=torch.float64)
        dist.all_reduce(t, group=self.process_group)
        self.bytes_allreduced += t.numel() * t.element_size()
        self.losses = (t / self.world_size).tolist()
        return self.losses

    def stash_grads(self) -> None:
        """After a ``no_sync`` pass: move every ``p.grad`` aside as this language's gradient
        (no copy: ``p.grad`` is set to None, so the next pass starts from nothing)."""
        for p in self.params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            self._stash.setdefault(id(p), []).append((g.reshape(-1), None))
            p.grad = None

    def finish_step(self) -> dict[str, Any]:
        """Close the step: for the global scope solve once and write ``p.grad``; return the
        diagnostics in the same shape as :func:`training.moo.moo_backward`'s."""
        if self.current != len(self.languages) - 1:
            raise RuntimeError("finish_step() before the last language's backward")
        if self._stash:
            raise RuntimeError(
                f"{len(self._stash)} parameters got gradients for some languages but not the "
                "last one; every language's forward must use every trainable parameter"
            )
        if self.config.moo_scope == "global" and self.config.moo != "none":
            self._solve_global()
        cfg, langs = self.config, self.languages
        records = [r for _, r, _ in sorted(self._records, key=lambda x: x[0])]
        total = sum((g for _, _, g in self._records), np.zeros((len(langs), len(langs))))
        diag = {
            "method": cfg.moo,
            "scope": cfg.moo_scope,
            "normalization": cfg.moo_normalization,
            "languages": list(langs),
            "losses": self.losses,
            "step": self.step,
            "world_size": self.world_size,
            "hook_mode": self.mode,
            "bytes_allreduced": self.bytes_allreduced,
        }
        if records:
            diag.update(summarize_groups(records, total, langs))
        diag["groups"] = records
        self.step += 1
        self.current = -1
        return diag

    # -- internals -------------------------------------------------------------------------

    def _groups_in_bucket(self, indices: list[int]) -> list[list[int]]:
        """Positions (within the bucket) of the parameters solved together."""
        if self.config.moo_scope != "layer":
            return [list(range(len(indices)))]
        groups: dict[str, list[int]] = {}
        for pos, idx in enumerate(indices):
            key = self.short_keys[idx] if self.short_keys is not None else str(idx)
            groups.setdefault(key, []).append(pos)
        return list(groups.values())

    def _label(self, bucket_index: int, indices: list[int]) -> str:
        if self.config.moo_scope == "global":
            return "all"
        if self.short_keys is None:
            prefix = "b" if self.config.moo_scope == "bucket" else "p"
            return f"{prefix}{bucket_index if prefix == 'b' else min(indices)}"
        span = span_label([self.short_keys[i] for i in sorted(indices)])
        return f"b{bucket_index} {span}" if self.config.moo_scope == "bucket" else span

    def _combine(
        self,
        stacked: torch.Tensor,
        indices: list[int],
        offsets: list[tuple[int, int]],
        bucket_index: int,
    ) -> torch.Tensor:
        """Solve each group of the bucket from the averaged K x n stack; return the combined n."""
        out = torch.empty(stacked.shape[1], dtype=stacked.dtype, device=stacked.device)
        groups = self._groups_in_bucket(indices)
        grams = _bucket_grams(stacked, offsets, groups)
        for sub, positions in enumerate(groups):
            gram_np = grams[sub]
            check_finite_gram(gram_np, self.languages)
            members = [indices[pos] for pos in positions]
            sol = solve_group(gram_np, self.config, self._loss_values(), self.step, min(members))
            alpha = torch.as_tensor(sol.alpha, dtype=stacked.dtype, device=stacked.device)
            for pos in positions:
                off, numel = offsets[pos]
                out[off : off + numel] = alpha @ stacked[:, off : off + numel]
            numel_group = sum(offsets[pos][1] for pos in positions)
            label = self._label(bucket_index, members)
            rec = group_diagnostics(gram_np, sol, self.languages, label, numel_group, members)
            self._records.append(((bucket_index, sub), rec, gram_np))
        return out

    def _loss_values(self) -> list[float] | None:
        if self.config.moo_normalization == "loss" and self.losses is None:
            raise RuntimeError("moo_normalization='loss' needs state.set_losses() each step")
        return self.losses

    def _solve_global(self) -> None:
        k = len(self.languages)
        gram = np.zeros((k, k))
        for _, offsets, stacked in self._global:
            for off, numel in offsets:
                gram += param_gram(stacked[:, off : off + numel])
        check_finite_gram(gram, self.languages)
        all_indices = [i for indices, _, _ in self._global for i in indices]
        sol = solve_group(gram, self.config, self._loss_values(), self.step, 0)
        for indices, offsets, stacked in self._global:
            alpha = torch.as_tensor(sol.alpha, dtype=stacked.dtype, device=stacked.device)
            for idx, (off, numel) in zip(indices, offsets, strict=True):
                p = self.params[idx]
                p.grad = (alpha @ stacked[:, off : off + numel]).view_as(p).clone()
        numel = sum(self.params[i].numel() for i in all_indices)
        rec = group_diagnostics(gram, sol, self.languages, "all", numel, all_indices)
        self._records.append(((0, 0), rec, gram))


def _bucket_grams(
    stacked: torch.Tensor, offsets: list[tuple[int, int]], groups: list[list[int]]
) -> list[np.ndarray]:
    """K x K Gram matrix of every group of a K x n bucket stack, computed on the bucket's
    device and copied to the host once for the whole bucket. A group that covers the whole
    bucket (bucket scope) is one matrix product; otherwise its parameters' blocks are summed."""
    x = stacked if stacked.dtype in (torch.float32, torch.float64) else stacked.float()
    n = x.shape[1]
    blocks = []
    for positions in groups:
        spans = [offsets[pos] for pos in positions]
        if len(spans) == len(offsets) and sum(num for _, num in spans) == n:
            blocks.append((x @ x.T).to(torch.float64))
            continue
        acc = None
        for off, num in spans:
            part = x[:, off : off + num]
            g = (part @ part.T).to(torch.float64)
            acc = g if acc is None else acc + g
        blocks.append(acc)
    return list(torch.stack(blocks).cpu().numpy())


def _completed(t: torch.Tensor) -> torch.futures.Future:
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(t)
    return fut


def moo_comm_hook(state: MooHookState, bucket: dist.GradBucket) -> torch.futures.Future:
    """DDP communication hook implementing bucket-level MOO (see the module docstring)."""
    k = state.current
    num_langs = len(state.languages)
    if k < 0:
        raise RuntimeError(
            "MOO comm hook: call state.start_language(k) before each language's backward "
            "(or use ddp_moo_backward)"
        )
    buf = bucket.buffer()
    params = bucket.parameters()
    offsets, off = [], 0
    for p in params:
        offsets.append((off, p.numel()))
        off += p.numel()
    indices = [state.param_index[id(p)] for p in params]
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)

    cfg = state.config
    # exact mode all-reduces each language's bucket as soon as its pass produces it, so the
    # traffic of languages 0..K-2 overlaps the later passes; the reduction is element-wise,
    # so the per-parameter views stay right even if DDP rebuilds its buckets mid-step
    pipelined = cfg.moo != "none" and (state.mode == "exact" or cfg.moo_scope == "global")

    if k < num_langs - 1:  # stash this language's gradient, let DDP write zeros
        copy = buf.clone()
        fut = None
        if pipelined:
            copy.div_(world)
            state.bytes_allreduced += copy.numel() * copy.element_size()
            fut = dist.all_reduce(copy, group=group, async_op=True).get_future()
        for p, (o, n) in zip(params, offsets, strict=True):
            state._stash.setdefault(id(p), []).append((copy[o : o + n], fut))
        buf.zero_()
        return _completed(buf)

    earlier: list[list[tuple[torch.Tensor, Any]]] = []
    for p in params:
        got = state._stash.pop(id(p), [])
        if len(got) != num_langs - 1:
            raise RuntimeError(
                f"parameter {state.param_index[id(p)]} has gradients for {len(got)} of the "
                f"first {num_langs - 1} languages; every language must use every parameter"
            )
        earlier.append(got)
    state.layout[bucket.index()] = indices

    def stack(current: torch.Tensor) -> torch.Tensor:
        """K x n: the stashed languages (reduced if pipelined) and the current one."""
        out = torch.empty((num_langs, current.numel()), dtype=current.dtype, device=current.device)
        out[num_langs - 1] = current
        waited: set[int] = set()
        for (o, n), got in zip(offsets, earlier, strict=True):
            for j, (g, fut) in enumerate(got):
                if fut is not None and id(fut) not in waited:
                    fut.wait()
                    waited.add(id(fut))
                out[j, o : o + n] = g
        return out

    if cfg.moo == "none":  # plain average of the language gradients: one n-sized all-reduce
        mean = stack(buf).mean(dim=0).div_(world)
        state.bytes_allreduced += mean.numel() * mean.element_size()
        fut = dist.all_reduce(mean, group=group, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    if not pipelined:  # local_gram
        return _local_gram(state, stack(buf), indices, offsets, bucket.index(), group, world)

    if all(fut is not None for got in earlier for _, fut in got):
        # the earlier languages are on their way already: reduce the current one, then stack
        current = buf.div_(world)
        state.bytes_allreduced += current.numel() * current.element_size()
        fut = dist.all_reduce(current, group=group, async_op=True).get_future()

        def stacked_of(f: torch.futures.Future) -> torch.Tensor:
            return stack(f.value()[0])

    else:  # the earlier languages came from no_sync passes: reduce all K at once
        local = stack(buf).div_(world)
        state.bytes_allreduced += local.numel() * local.element_size()
        fut = dist.all_reduce(local, group=group, async_op=True).get_future()

        def stacked_of(f: torch.futures.Future) -> torch.Tensor:
            return f.value()[0]

    if cfg.moo_scope == "global":

        def keep(f: torch.futures.Future) -> torch.Tensor:
            state._global.append((indices, offsets, stacked_of(f)))
            return torch.zeros_like(buf)

        return fut.then(keep)

    def solve(f: torch.futures.Future) -> torch.Tensor:
        return state._combine(stacked_of(f), indices, offsets, bucket.index())

    return fut.then(solve)


# DDP checks the hook's annotations as objects; ``from __future__ import annotations`` made
# them strings, so restore the real ones.
moo_comm_hook.__annotations__ = {
    "state": MooHookState,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def _local_gram(
    state: MooHookState,
    stacked: torch.Tensor,
    indices: list[int],
    offsets: list[tuple[int, int]],
    bucket_index: int,
    group: Any,
    world: int,
) -> torch.futures.Future:
    """Low-traffic variant: all-reduce the local Gram matrices, solve, all-reduce the result.

    The Gram all-reduce waits inside the hook: collectives issued from future callbacks run on
    another thread and could reach the ranks in different orders, which gloo cannot match.
    """
    k = len(state.languages)
    groups = state._groups_in_bucket(indices)
    grams = torch.zeros(len(groups), k, k, dtype=torch.float64)
    for gi, positions in enumerate(groups):
        for pos in positions:
            o, n = offsets[pos]
            grams[gi] += torch.from_numpy(param_gram(stacked[:, o : o + n]))
    state.bytes_allreduced += grams.numel() * grams.element_size()
    dist.all_reduce(grams, group=group)
    grams /= world
    out = torch.empty(stacked.shape[1], dtype=stacked.dtype, device=stacked.device)
    for gi, positions in enumerate(groups):
        gram_np = grams[gi].numpy()
        members = [indices[pos] for pos in positions]
        sol = solve_group(gram_np, state.config, state._loss_values(), state.step, min(members))
        alpha = torch.as_tensor(sol.alpha, dtype=stacked.dtype, device=stacked.device)
        for pos in positions:
            o, n = offsets[pos]
            out[o : o + n] = alpha @ stacked[:, o : o + n]
        numel_group = sum(offsets[pos][1] for pos in positions)
        label = state._label(bucket_index, members)
        rec = group_diagnostics(gram_np, sol, state.languages, label, numel_group, members)
        state._records.append(((bucket_index, gi), rec, gram_np))
    out.div_(world)
    state.bytes_allreduced += out.numel() * out.element_size()
    fut = dist.all_reduce(out, group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def register_moo_hook(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    languages: Sequence[str],
    config: Any,
    mode: str = "exact",
    process_group: Any = None,
) -> MooHookState:
    """Register the MOO communication hook on a DDP model and return its state.

    ``config`` is anything :func:`training.moo.resolve_config` reads; parameter names for the
    ``layer`` scope and the labels come from the wrapped module. Register before the first
    forward (DDP allows one hook per model).
    """
    if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        raise ValueError("register_moo_hook needs a torch.nn.parallel.DistributedDataParallel")
    if mode not in HOOK_MODES:
        raise ValueError(f"mode must be one of {', '.join(HOOK_MODES)}; got {mode!r}")
    langs = list(languages)
    if not langs or len(set(langs)) != len(langs):
        raise ValueError(f"languages must be non-empty and distinct, got {langs}")
    cfg = resolve_config(config)
    named = [(n, p) for n, p in ddp_model.module.named_parameters() if p.requires_grad]
    state = MooHookState(
        languages=langs,
        config=cfg,
        param_index={id(p): i for i, (_, p) in enumerate(named)},
        params=[p for _, p in named],
        short_keys=short_layer_keys([n for n, _ in named]),
        mode=mode,
        process_group=process_group,
    )
    ddp_model.register_comm_hook(state, moo_comm_hook)
    return state


def ddp_moo_backward(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    state: MooHookState,
    batches: Mapping[str, Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    no_sync: bool = True,
) -> dict[str, Any]:
    """One step's K forward/backward passes, one per language, through the hook.

    ``batches`` maps every language to this rank's sub-batch; ``loss_fn(ddp_model, batch)``
    returns its mean loss. Start from zeroed gradients (``zero_grad(set_to_none=True)``).
    Afterwards ``p.grad`` holds the combined gradient (identical on all ranks); step the
    optimiser as usual. Returns the step's diagnostics.

    ``no_sync=True`` runs the first K-1 passes under ``ddp_model.no_sync()`` and takes their
    gradients straight from ``p.grad`` (DDP copies nothing into or out of its buckets); the
    last pass goes through the hook, which all-reduces the K x n stack per bucket.
    ``no_sync=False`` sends every pass through the hook, which all-reduces each language's
    bucket as soon as it is ready (more copies, more overlap of communication); the first step
    always does, because DDP rebuilds its buckets after its first synced backward.
    """
    missing = [lang for lang in state.languages if lang not in batches]
    if missing:
        raise ValueError(
            f"this rank has no batch for {missing}; every rank needs every language each step"
        )
    local_losses: list[float] = []
    last = len(state.languages) - 1
    # DDP forms its real buckets only after its first synced backward (one bucket before):
    # until then every pass goes through the hook, so the last pass sees the real buckets
    no_sync = no_sync and bool(getattr(ddp_model, "_has_rebuilt_buckets", True))
    for k, lang in enumerate(state.languages):
        state.start_language(k)
        quiet = no_sync and k < last
        with ddp_model.no_sync() if quiet else contextlib.nullcontext():
            loss = loss_fn(ddp_model, batches[lang])
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                raise ValueError(
                    f"loss_fn must return a scalar tensor that requires grad ({lang!r})"
                )
            if not torch.isfinite(loss.detach()).all():
                raise ValueError(f"the loss of language {lang!r} is not finite: {loss.item()}")
            local_losses.append(float(loss.detach()))
            if k == last:
                state.set_losses(local_losses)
            loss.backward()
        if quiet:
            state.stash_grads()
    return state.finish_step()


def ddp_moo_accumulated_backward(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    state: MooHookState,
    batches: Mapping[str, Sequence[Any]],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    *,
    dummy: Any = None,
    no_sync: bool = True,
) -> dict[str, Any]:
    """One optimiser step of MOO under DDP with gradient accumulation: the solve runs once.

    ``batches[lang]`` lists this rank's sub-batches of ``lang`` over the step's micro-batches
    (possibly none: a rank may lack a language in a step); ``loss_fn(ddp_model, sub_batch)``
    returns that sub-batch's share of the language's loss, already scaled so that the
    per-language gradients *summed* over the sub-batches and *averaged* over the ranks (what
    the hook all-reduces) are the gradient of the language's loss over the global batch.
    ``state.languages`` (set with :meth:`MooHookState.set_languages`) fixes the order.

    Per language, every sub-batch but one runs under ``no_sync()`` and accumulates into
    ``p.grad``; the language's last sub-batch goes through DDP (so its bucket holds the whole
    accumulated language gradient) when it must: always for the last language, and for every
    language before DDP has rebuilt its buckets or with ``no_sync=False``. A rank without a
    sub-batch for such a synced pass runs ``dummy`` (any sub-batch) with a zero loss, because
    every rank must take part in every synced backward. Returns the step's diagnostics.
    """
    langs = state.languages
    missing = [lang for lang in langs if lang not in batches]
    if missing:
        raise ValueError(f"no entry in batches for {missing} (use an empty list)")
    last = len(langs) - 1
    quiet_ok = no_sync and bool(getattr(ddp_model, "_has_rebuilt_buckets", True))
    local_losses: list[float] = []
    for k, lang in enumerate(langs):
        state.start_language(k)
        subs = list(batches[lang])
        synced = k == last or not quiet_ok
        total = None
        for j, sub in enumerate(subs):
            sync_this = synced and j == len(subs) - 1
            with contextlib.nullcontext() if sync_this else ddp_model.no_sync():
                loss = loss_fn(ddp_model, sub)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ValueError(f"loss_fn must return a scalar tensor ({lang!r})")
                value = loss.detach().reshape(())
                total = value if total is None else total + value
                if sync_this and k == last:
                    local_losses.append(float(total))
                    state.set_losses(local_losses)
                loss.backward()
        if not subs:
            if k != last:
                local_losses.append(0.0)
            if synced:  # take part in the synced backward with a zero contribution
                if dummy is None:
                    raise ValueError(f"this rank has no sub-batch of {lang!r} and no dummy")
                loss = loss_fn(ddp_model, dummy) * 0.0
                if k == last:
                    local_losses.append(0.0)
                    state.set_losses(local_losses)
                loss.backward()
        elif k != last:
            local_losses.append(float(total))
        if not synced:
            state.stash_grads()
    return state.finish_step()


def allreduce_bytes(
    numel: int, num_languages: int, mode: str = "exact", num_groups: int = 1, elem_bytes: int = 4
) -> dict[str, int]:
    """Payload bytes all-reduced per step: plain DDP against the MOO hook (see module doc)."""
    plain = numel * elem_bytes
    if mode == "exact":
        moo = num_languages * numel * elem_bytes + num_languages * 8
    elif mode == "local_gram":
        moo = numel * elem_bytes + num_groups * num_languages**2 * 8 + num_languages * 8
    else:
        raise ValueError(f"mode must be one of {', '.join(HOOK_MODES)}; got {mode!r}")
    return {"plain_ddp": plain, "moo": moo}
