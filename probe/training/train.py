"""Train a grid of attentive probes side by side over stored features (V-JEPA 2's frozen protocol).

Every probe of the grid (learning rates x weight decays) sees the same batches; each has its own AdamW
and a per-step linear decay to `final_lr` without warm-up. A validation split carved from the training
clips picks one (probe, epoch); the test split is evaluated with that state once. The test top-1 of
every probe at every epoch is also tracked, only to report the original protocol's maximum over the
grid, which is selected on the test set and therefore optimistic.

Validation clips are scored on all their stored views, averaged like the test views.
Data order and the training view of each clip derive from (seed, epoch), so an epoch-end checkpoint
(`checkpoint=`) resumes to the same final numbers as an uninterrupted run.

Data-parallel over several processes (`probe.distributed`): every process draws the same global
batches and takes a contiguous slice of each; the loss is the slice's summed loss over the global
batch size, so the summed gradient (one all-reduce of all probes' gradients per step) is the
single-process gradient of the whole batch, and every process takes the same optimiser step.
Validation and test clips are split between the processes and gathered, so every process selects
the same (probe, epoch). Process 0 writes the checkpoint; all read it on resume.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import math
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from probe import distributed
from probe.files import atomic_write
from probe.store.features import FeatureBatch, Features
from probe.training.evaluate import (
    Metrics,
    aggregate_views,
    autocast,
    classification_metrics,
    original_test_reads,
    per_view_top1,
    predict,
    topk_accuracy,
)
from probe.training.grid import StackedAdamW, StackedProbes, stack_unsupported
from probe.training.head import HEADS
from tasks.progress import Progress, progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of every probe of a grid: `kind` names the head (`probe.training.head.HEADS`: "attentive",
    ours, or "original", the original suite's), the other fields its options (see `AttentiveProbe`);
    a head takes the options it declares."""

    kind: str = "attentive"
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    depth: int = 0
    temporal_pos: str = "none"
    temporal_slots: int | None = None
    norm: str = "layer"
    positions: str = "none"
    kv_norm: str = "layer"
    pool_norm: str = "layer"
    query_residual: bool = True
    query_init_std: float = 0.02

    def build(self, embed_dim: int, num_classes: int) -> torch.nn.Module:
        if self.kind not in HEADS:
            raise ValueError(f"probe head kind {self.kind!r} is unknown; choose one of {sorted(HEADS)}")
        head = HEADS[self.kind]
        takes = inspect.signature(head).parameters
        return head(embed_dim, num_classes, **{k: v for k, v in asdict(self).items() if k in takes})


GRID_TRAINERS = ("auto", "stacked", "loop")
SELECTIONS = {"val": "val", "test_max": "max over test epochs, original protocol"}


@dataclass(frozen=True)
class Recipe:
    """Optimisation, selection and evaluation settings shared by the probes of a grid."""

    lrs: tuple[float, ...] = (1e-4,)
    wds: tuple[float, ...] = (0.0,)
    epochs: int = 10
    batch_size: int = 32
    final_lr: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 5.0
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    view_space: str = "logit"  # how val/test views are averaged: "logit" or "prob"
    track_test: bool = True  # test top-1 every epoch, only for the grid-maximum number
    bootstrap: int = 1000
    eval_batch_size: int = 64
    seed: int = 0
    # "val": the (probe, epoch) best on validation, test evaluated once (ours). "test_max": the best test
    # top-1 over epochs and probes, trained on the whole training split (val_fraction 0): the original
    # protocol's number, optimistic by construction and labelled so in the record.
    selection: str = "val"
    # "auto": the grid as one stacked module where the head allows (`probe.training.grid`), else one after
    # the other; "stacked" or "loop" force one (same numbers up to float rounding).
    grid: str = "auto"
    # True: an epoch trains on whole global batches only (len // batch_size steps), as the original's
    # loader reads whole per-GPU batches; False: the last partial batch too.
    drop_last: bool = False
    # > 0: also score, every epoch, the test clips the original's test loader reads over this many ranks
    # (`original_test_reads`) at a per-rank batch of batch_size // ranks (`GridResult.original_coverage`).
    coverage_ranks: int = 0

    def __post_init__(self) -> None:
        if self.grid not in GRID_TRAINERS:
            raise ValueError(f"recipe.grid={self.grid!r}; choose one of {', '.join(GRID_TRAINERS)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"recipe.selection={self.selection!r}; choose one of {', '.join(SELECTIONS)}")
        if self.coverage_ranks < 0 or (self.coverage_ranks and self.batch_size % self.coverage_ranks):
            raise ValueError(f"recipe.coverage_ranks={self.coverage_ranks} must be 0 or divide "
                             f"recipe.batch_size={self.batch_size} (the original loader's per-rank batch)")
        if self.coverage_ranks and not self.track_test:
            raise ValueError("recipe.coverage_ranks reads the test split every epoch: set track_test=true")
        if self.selection == "test_max" and (self.val_fraction != 0 or not self.track_test):
            raise ValueError(
                "recipe.selection=test_max trains on the whole training split and reads the "
                "test split every epoch: set val_fraction=0 and track_test=true"
            )


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    lr: float
    wd: float


def probe_grid(recipe: Recipe) -> list[ProbeSpec]:
    return [ProbeSpec(f"lr={lr:g}_wd={wd:g}", lr, wd) for lr, wd in product(recipe.lrs, recipe.wds)]


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    val_top1: float | None  # None: no validation split (selection "test_max")
    val_loss: float | None
    test_top1: float | None  # never used for selection
    lr: float  # at the end of the epoch
    # the test top-1 over the clips the original's test loader reads this epoch (`recipe.coverage_ranks`)
    coverage_top1: float | None = None


@dataclass(frozen=True)
class Selection:
    """The (probe, epoch) with the best validation top-1 (ties: lower validation loss, then earlier), or
    under selection "test_max" the best test top-1 (ties: earlier)."""

    probe: str
    epoch: int
    val_top1: float | None
    val_loss: float | None
    rule: str = SELECTIONS["val"]


def _rank(stats: EpochStats, selection: str) -> tuple[float, float]:
    if selection == "test_max":
        return stats.test_top1, 0.0
    return stats.val_top1, -stats.val_loss


@dataclass(frozen=True)
class GridMaximum:
    """The best test top-1 over all epochs and probes, chosen on test: the original protocol's kind of
    number, which only `protocol=original` computes as the original does."""

    top1: float
    probe: str
    epoch: int


@dataclass
class GridResult:
    probes: list[ProbeSpec]
    curves: dict[str, list[EpochStats]]
    selected: Selection
    test: Metrics  # of the selected probe state, evaluated once
    test_per_view_top1: list[float]
    best_test_over_grid: GridMaximum | None
    # Under `recipe.coverage_ranks`: the original's number as its test loader reads the split (max over
    # epochs and probes of `coverage_top1`) beside the full-set top-1 at that epoch (`original_coverage`).
    original_coverage: dict[str, Any] | None
    num_train: int
    num_val: int
    num_test: int
    train_seconds: float  # this session only (a resumed run counts from its restart)
    trainer: str  # "stacked" (one module for the grid) or "loop" (one probe after the other)
    test_view_logits: torch.Tensor = field(repr=False)  # [C, V, K] of the selected probe
    selected_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)  # its weights

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the logits and weights)."""
        # asdict would deep-copy the tensors
        out = asdict(replace(self, test_view_logits=torch.empty(0), selected_state={}))
        del out["test_view_logits"], out["selected_state"]
        return out


def split_train_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of clip indices, stratified by class: round(fraction * n_c) of each class go to val."""
    rng = np.random.default_rng([seed, 1])
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[: round(fraction * len(members))])
    val_idx = np.sort(np.concatenate(val))
    if not len(val_idx) and fraction > 0:
        raise ValueError(f"val_fraction {fraction} leaves no validation clips out of {len(labels)}; raise it")
    if not len(val_idx) and fraction == 0 and len(labels):
        return np.arange(len(labels)), val_idx
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


class _Grid:
    """The probes with their optimisers and schedules, all built from one seed, trained one after the
    other on each batch (any head)."""

    trainer = "loop"

    def __init__(
        self,
        specs: list[ProbeSpec],
        heads: list[torch.nn.Module],
        recipe: Recipe,
        total_steps: int,
        device: torch.device,
    ) -> None:
        self.recipe, self.device = recipe, device
        self.heads, self.optimizers, self.schedulers = [], [], []
        for model, spec in zip(heads, specs, strict=True):
            groups = [
                {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": spec.wd},
                {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
            ]
            optimizer = AdamW(groups, lr=spec.lr, betas=recipe.betas)
            self.heads.append(model)
            self.optimizers.append(optimizer)
            self.schedulers.append(LambdaLR(optimizer, _linear_decay(spec.lr, recipe.final_lr, total_steps)))
        self.modules: list[torch.nn.Module] = self.heads

    def step(self, batch: FeatureBatch, size: int) -> torch.Tensor:
        """One optimiser step of every probe on `batch` (this process's slice of a global batch of
        `size`); the summed training loss of each probe [P]."""
        losses = []
        for head, optimizer in zip(self.heads, self.optimizers, strict=True):
            with autocast(self.device):
                logits = head(batch.tokens, batch.positions, batch.mask)
            loss = F.cross_entropy(
                logits.float(), batch.labels, label_smoothing=self.recipe.label_smoothing, reduction="sum"
            )
            optimizer.zero_grad(set_to_none=True)
            (loss / size).backward()
            losses.append(loss.detach())
        _sum_gradients(self.heads)
        for head, optimizer, scheduler in zip(self.heads, self.optimizers, self.schedulers, strict=True):
            torch.nn.utils.clip_grad_norm_(head.parameters(), self.recipe.grad_clip)
            optimizer.step()
            scheduler.step()
        return torch.stack(losses)

    def lrs(self) -> list[float]:
        return [s.get_last_lr()[0] for s in self.schedulers]

    def probe_state(self, p: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.heads[p].state_dict().items()}

    def state_dict(self) -> dict[str, list[dict]]:
        return {
            "heads": [h.state_dict() for h in self.heads],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def load_state_dict(self, state: dict[str, list[dict]]) -> None:
        for objs, key in (
            (self.heads, "heads"),
            (self.optimizers, "optimizers"),
            (self.schedulers, "schedulers"),
        ):
            for obj, sd in zip(objs, state[key], strict=True):
                obj.load_state_dict(sd)


class _StackedGrid:
    """The same probes as `_Grid` (same initial weights, update rule and schedules) as one stacked
    module (`probe.training.grid.StackedProbes`): one forward and backward per batch for the whole grid."""

    trainer = "stacked"

    def __init__(
        self,
        specs: list[ProbeSpec],
        heads: list[torch.nn.Module],
        recipe: Recipe,
        total_steps: int,
        device: torch.device,
    ) -> None:
        self.recipe, self.device = recipe, device
        self.module = StackedProbes(heads)
        self.optimizer = StackedAdamW(
            self.module.stacked,
            self.module.decayed(),
            [s.lr for s in specs],
            [s.wd for s in specs],
            recipe.betas,
            recipe.final_lr,
            total_steps,
            recipe.grad_clip,
        )
        self.modules: list[torch.nn.Module] = [self.module]

    def step(self, batch: FeatureBatch, size: int) -> torch.Tensor:
        with autocast(self.device):
            logits = self.module(batch.tokens, batch.positions, batch.mask)  # [P, B, K]
        num_probes = logits.shape[0]
        losses = (
            F.cross_entropy(
                logits.float().flatten(0, 1),
                batch.labels.repeat(num_probes),
                label_smoothing=self.recipe.label_smoothing,
                reduction="none",
            )
            .view(num_probes, -1)
            .sum(1)
        )
        self.module.zero_grad(set_to_none=True)
        (losses.sum() / size).backward()
        _sum_gradients(self.modules)
        self.optimizer.step()
        return losses.detach()

    def lrs(self) -> list[float]:
        return self.optimizer.current_lrs()

    def probe_state(self, p: int) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.module.probe_state(p).items()}

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


def _build_heads(
    specs: list[ProbeSpec],
    embed_dim: int,
    num_classes: int,
    head: HeadConfig,
    recipe: Recipe,
    device: torch.device,
) -> list[torch.nn.Module]:
    """One head per probe, every one from the same seed (so the grid differs only in lr and wd)."""
    heads = []
    for _ in specs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            heads.append(head.build(embed_dim, num_classes).to(device))
    return heads


def make_grid(
    specs: list[ProbeSpec],
    embed_dim: int,
    num_classes: int,
    head: HeadConfig,
    recipe: Recipe,
    total_steps: int,
    device: torch.device,
) -> _Grid | _StackedGrid:
    """The grid trainer `recipe.grid` asks for: "stacked" (refused, with the reason, for a head it cannot
    stack), "loop", or "auto" (stacked when the head allows)."""
    why = stack_unsupported(head.kind, head.depth, head.positions, head.temporal_pos)
    if recipe.grid == "stacked" and why is not None:
        raise ValueError(f"probe.recipe.grid=stacked cannot train this head ({why}); use grid=loop or auto")
    kind = _StackedGrid if recipe.grid != "loop" and why is None else _Grid
    return kind(specs, _build_heads(specs, embed_dim, num_classes, head, recipe, device), recipe, total_steps,
                device)


def _linear_decay(lr: float, final_lr: float, total_steps: int) -> Callable[[int], float]:
    end = final_lr / lr
    return lambda step: 1.0 + (end - 1.0) * min(step, total_steps) / total_steps


def train_probe_grid(
    train: Features,
    test: Features,
    num_classes: int,
    head: HeadConfig = HeadConfig(),
    recipe: Recipe = Recipe(),
    *,
    checkpoint: str | Path | None = None,
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[int, dict[str, EpochStats]], None] | None = None,
    progress: Progress = "auto",
) -> GridResult:
    """Train the grid, select on validation, evaluate the selected state on test once.

    `checkpoint` is a file written atomically after every epoch and resumed from if present (it must
    come from the same features and settings). `on_epoch_end(epoch, stats_by_probe)` runs after
    that write.
    """
    if recipe.epochs < 1:
        raise ValueError(f"recipe.epochs must be at least 1, got {recipe.epochs}")
    device = torch.device(device)
    started = time.perf_counter()
    specs = probe_grid(recipe)
    train_idx, val_idx = split_train_val(train.labels, recipe.val_fraction, recipe.seed)
    steps_per_epoch = (len(train_idx) // recipe.batch_size if recipe.drop_last
                       else math.ceil(len(train_idx) / recipe.batch_size))
    rank_batch = recipe.batch_size // recipe.coverage_ranks if recipe.coverage_ranks else 0
    if rank_batch and test.num_clips // recipe.coverage_ranks < rank_batch:
        raise ValueError(f"recipe.coverage_ranks={recipe.coverage_ranks}: the original's test loader reads "
                         f"no whole batch of {rank_batch} out of {test.num_clips} test clips; set "
                         "coverage_ranks=0")
    if steps_per_epoch < 1:
        raise ValueError(f"recipe.drop_last with {len(train_idx)} training clips and batch_size "
                         f"{recipe.batch_size} leaves no whole batch; lower probe.recipe.batch_size")
    total_steps = recipe.epochs * steps_per_epoch
    grid = make_grid(specs, train.embed_dim, num_classes, head, recipe, total_steps, device)
    curves: dict[str, list[EpochStats]] = {s.name: [] for s in specs}
    best: Selection | None = None
    best_rank: tuple[float, float] = (-math.inf, -math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    done = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    key = _run_key(train, test, num_classes, head, recipe, grid.trainer)
    saved = _load_checkpoint(ckpt, key, device) if ckpt is not None and ckpt.is_file() else None
    if saved is not None:
        grid.load_state_dict(saved)
        curves = {n: [EpochStats(**s) for s in c] for n, c in saved["curves"].items()}
        best = Selection(**saved["best"]) if saved["best"] else None
        if best is not None:
            best_rank = _rank(curves[best.probe][best.epoch - 1], recipe.selection)
        best_state = {k: v.cpu() for k, v in saved["best_state"].items()}
        done = saved["epoch"]
        log.info("resuming probe training from %s after epoch %d", ckpt, done)
    resumed = distributed.all_gather_object(done)
    if len(set(resumed)) > 1:
        raise RuntimeError(
            f"the processes resumed {ckpt} at different epochs {resumed}: every process must see the "
            "same cache_dir (a folder all nodes share)"
        )

    bar = progress_bar(
        progress if distributed.is_main() else "off",
        total=recipe.epochs * steps_per_epoch,
        initial=done * steps_per_epoch,
        desc="probes",
        unit="step",
    )
    with bar, logging_redirect_tqdm():
        for epoch in range(done, recipe.epochs):
            t0 = time.perf_counter()
            losses = _train_epoch(grid, train, train_idx, recipe, epoch, device, bar)
            _check_finite(losses, specs, train, epoch + 1)
            for p, (spec, stats) in enumerate(
                zip(specs, _score(grid, losses, train, val_idx, test, recipe, epoch, device), strict=True)
            ):
                curves[spec.name].append(stats)
                if best is None or _rank(stats, recipe.selection) > best_rank:
                    best = Selection(
                        spec.name, epoch + 1, stats.val_top1, stats.val_loss, SELECTIONS[recipe.selection]
                    )
                    best_rank = _rank(stats, recipe.selection)
                    best_state = grid.probe_state(p)
            if distributed.is_main():
                _log_epoch(epoch + 1, recipe.epochs, curves, best, time.perf_counter() - t0)
                if ckpt is not None:
                    _save_checkpoint(ckpt, key, epoch + 1, grid, curves, best, best_state)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, {name: c[-1] for name, c in curves.items()})

    assert best is not None and best_state is not None  # epochs >= 1
    final = head.build(train.embed_dim, num_classes).to(device)
    final.load_state_dict(best_state)
    logits = predict([final], test, np.arange(test.num_clips), device, recipe.eval_batch_size)[0]
    metrics = classification_metrics(logits, test.labels, recipe.view_space, recipe.bootstrap, recipe.seed)
    log.info(
        "selected %s epoch %d (%s): test top-1 %.2f [%.2f, %.2f], top-5 %.2f, mean-class %.2f",
        best.probe,
        best.epoch,
        "no validation split" if best.val_top1 is None else f"val top-1 {best.val_top1:.2f}",
        metrics.top1,
        metrics.top1_low,
        metrics.top1_high,
        metrics.top5,
        metrics.mean_class,
    )
    return GridResult(
        probes=specs,
        curves=curves,
        selected=best,
        test=metrics,
        test_per_view_top1=per_view_top1(logits, test.labels),
        best_test_over_grid=_grid_maximum(curves),
        original_coverage=_coverage_maximum(curves, test.num_clips, recipe),
        num_train=len(train_idx),
        num_val=len(val_idx),
        num_test=test.num_clips,
        train_seconds=time.perf_counter() - started,
        trainer=grid.trainer,
        test_view_logits=logits,
        selected_state=best_state,
    )


def _train_epoch(
    grid: _Grid | _StackedGrid,
    train: Features,
    train_idx: np.ndarray,
    recipe: Recipe,
    epoch: int,
    device: torch.device,
    bar: tqdm,
) -> list[float]:
    """One pass over the training clips, one seeded random view per clip; mean loss of each probe.

    Each process trains on its contiguous slice of every global batch (all of it when alone).
    """
    rng = np.random.default_rng([recipe.seed, 2, epoch])
    order = rng.permutation(train_idx)
    views = rng.integers(train.num_views, size=len(order))
    if getattr(train, "fresh_views", False):  # streamed features: epoch e draws its own view number e
        views = np.full(len(order), epoch)
    sums = torch.zeros(len(grid.lrs()), device=device)
    for module in grid.modules:
        module.train()
    world, rank = distributed.world_size(), distributed.rank()
    if recipe.drop_last:
        order = order[: len(order) - len(order) % recipe.batch_size]
    for start in range(0, len(order), recipe.batch_size):
        size = min(recipe.batch_size, len(order) - start)
        sl = slice(start + size * rank // world, start + size * (rank + 1) // world)
        sums += grid.step(train.batch(order[sl], views[sl]).to(device), size)
        bar.update(1)
    return (distributed.all_reduce_sum(sums) / len(order)).tolist()


class NonFiniteLossError(RuntimeError):
    """A probe's training loss became NaN or infinite: its numbers would mean nothing."""


def _check_finite(losses: list[float], specs: list[ProbeSpec], train: Features, epoch: int) -> None:
    """Stop the run at the first epoch whose mean training loss is not finite for some probe."""
    bad = [f"{s.name} ({loss})" for s, loss in zip(specs, losses, strict=True) if not math.isfinite(loss)]
    if bad:
        store = getattr(train, "path", None)
        where = f"the feature store {store}" if store else f"features {train.fingerprint}"
        raise NonFiniteLossError(
            f"the training loss of probe {', '.join(bad)} is not finite in epoch {epoch}, on {where}: "
            "the stored tokens may hold NaN or inf (delete that folder to recompute it), or the learning "
            "rate is too high for these features; nothing of this epoch is saved"
        )


def _sum_gradients(heads: Sequence[torch.nn.Module]) -> None:
    """Sum every probe's gradients over the processes in one all-reduce (a no-op when alone)."""
    if distributed.world_size() == 1:
        return
    grads = [p.grad for head in heads for p in head.parameters() if p.grad is not None]
    flat = distributed.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def _score(
    grid: _Grid | _StackedGrid,
    losses: list[float],
    train: Features,
    val_idx: np.ndarray,
    test: Features,
    recipe: Recipe,
    epoch: int,
    device: torch.device,
) -> list[EpochStats]:
    """Each probe's epoch: validation top-1 and loss, and (tracking only) test top-1."""
    val_logits = None
    if len(val_idx):
        val_logits = predict(grid.modules, train, val_idx, device, recipe.eval_batch_size)
    val_labels = torch.from_numpy(train.labels[val_idx])
    test_logits = None
    if recipe.track_test:
        test_logits = predict(grid.modules, test, np.arange(test.num_clips), device, recipe.eval_batch_size)
    reads = None
    if recipe.coverage_ranks:
        reads = original_test_reads(test.num_clips, recipe.batch_size // recipe.coverage_ranks,
                                    recipe.coverage_ranks, epoch)
    out = []
    for p, lr in enumerate(grid.lrs()):
        logp = None if val_logits is None else aggregate_views(val_logits[p], recipe.view_space)
        out.append(
            EpochStats(
                epoch=epoch + 1,
                train_loss=losses[p],
                val_top1=None if logp is None else topk_accuracy(logp, val_labels, 1),
                val_loss=None if logp is None else -logp.gather(1, val_labels[:, None]).mean().item(),
                test_top1=None
                if test_logits is None
                else _top1(test_logits[p], test.labels, recipe.view_space),
                lr=lr,
                coverage_top1=None
                if reads is None
                else _top1(test_logits[p][reads], test.labels[reads], recipe.view_space),
            )
        )
    return out


def _top1(view_logits: torch.Tensor, labels: np.ndarray, space: str) -> float:
    return topk_accuracy(aggregate_views(view_logits, space), torch.from_numpy(labels), 1)


def _grid_maximum(curves: dict[str, list[EpochStats]]) -> GridMaximum | None:
    tracked = [
        (s.test_top1, name, s.epoch) for name, c in curves.items() for s in c if s.test_top1 is not None
    ]
    if not tracked:
        return None
    top1, name, epoch = max(tracked, key=lambda t: t[0])
    return GridMaximum(top1, name, epoch)


def _coverage_maximum(
    curves: dict[str, list[EpochStats]], num_test: int, recipe: Recipe
) -> dict[str, Any] | None:
    """`metrics.original_coverage`: the best `coverage_top1` over epochs and probes (ties: earlier), the
    full-set top-1 of that probe at that epoch, and what the original's loader read then."""
    tracked = [(s.coverage_top1, -s.epoch, name) for name, c in curves.items() for s in c
               if s.coverage_top1 is not None]
    if not tracked:
        return None
    top1, neg_epoch, name = max(tracked)
    epoch = -neg_epoch
    reads = original_test_reads(num_test, recipe.batch_size // recipe.coverage_ranks, recipe.coverage_ranks,
                                epoch - 1)
    return {
        "top1": top1,
        "epoch": epoch,
        "full_set_top1": curves[name][epoch - 1].test_top1,
        "ranks": recipe.coverage_ranks,
        "clips_read": int(len(np.unique(reads))),
        "reads": int(len(reads)),
    }


def _log_epoch(
    epoch: int, epochs: int, curves: dict[str, list[EpochStats]], best: Selection, seconds: float
) -> None:
    last = {name: c[-1] for name, c in curves.items()}
    selection = "test_max" if last[best.probe].val_top1 is None else "val"
    leader = max(last, key=lambda n: _rank(last[n], selection))
    tests = [s.test_top1 for s in last.values() if s.test_top1 is not None]
    chosen = curves[best.probe][best.epoch - 1]
    log.info(
        "epoch %d/%d | best this epoch %s: loss %.4f %s top-1 %.2f | max test top-1 %s | "
        "selected so far %s@%d (%.2f) | %.1fs",
        epoch,
        epochs,
        leader,
        last[leader].train_loss,
        "test" if selection == "test_max" else "val",
        _rank(last[leader], selection)[0],
        f"{max(tests):.2f}" if tests else "-",
        best.probe,
        best.epoch,
        _rank(chosen, selection)[0],
        seconds,
    )


def _run_key(
    train: Features, test: Features, num_classes: int, head: HeadConfig, recipe: Recipe, trainer: str
) -> str:
    blob = {
        "trainer": trainer,
        "train": train.fingerprint,
        "test": test.fingerprint,
        "num_classes": num_classes,
        "head": asdict(head),
        "recipe": asdict(recipe),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _save_checkpoint(
    path: Path,
    key: str,
    epoch: int,
    grid: _Grid | _StackedGrid,
    curves: dict[str, list[EpochStats]],
    best: Selection,
    best_state: dict[str, torch.Tensor],
) -> None:
    state = {
        "run_key": key,
        "epoch": epoch,
        **grid.state_dict(),
        "curves": {n: [asdict(s) for s in c] for n, c in curves.items()},
        "best": asdict(best),
        "best_state": best_state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = (
        f"The checkpoint of epoch {epoch - 1} is kept; the next run resumes from it."
        if epoch > 1
        else "No earlier epoch is saved: the next run trains the probes from the start (features are kept)."
    )
    # Serialised in memory first: torch's zip writer turns a full disk into an opaque RuntimeError, a plain
    # write keeps it an OSError that `atomic_write` names as a DiskFullError.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    atomic_write(path, lambda f: f.write(data), kept, len(data))


def _load_checkpoint(path: Path, key: str, device: torch.device) -> dict[str, Any] | None:
    """The saved state, or None (training starts over) if the file is damaged: every member's CRC is
    checked first, since `torch.load` reads a corrupted tensor without complaint."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"{bad} fails its CRC check")
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # whatever broke the file, it is not trusted
        log.warning("checkpoint %s is unreadable (%s); probe training starts over", path, err)
        return None
    if saved["run_key"] != key:
        raise RuntimeError(
            f"checkpoint {path} was written for other features or settings (run key {saved['run_key']}, "
            f"now {key}); delete it to start over or point `checkpoint` elsewhere"
        )
    torch.set_rng_state(saved["torch_rng"].cpu())
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])
    return saved
