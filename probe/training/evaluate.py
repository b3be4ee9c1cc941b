"""Evaluation: per-view logits of probes over stored features, view averaging, and the metrics.

Accuracies are percentages. Test-time views (num_clips x num_crops per clip) are the store's views;
their predictions are averaged either as logits or as probabilities (`space`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from probe import distributed
from probe.store.features import Features


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slow and not what is reported)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _mean_logits(view_logits: torch.Tensor) -> torch.Tensor:
    return view_logits.mean(dim=1).log_softmax(dim=-1)


def _mean_probs(view_logits: torch.Tensor) -> torch.Tensor:
    return view_logits.softmax(dim=-1).mean(dim=1).log()


AGGREGATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"logit": _mean_logits, "prob": _mean_probs}


def aggregate_views(view_logits: torch.Tensor, space: str = "logit") -> torch.Tensor:
    """[C, V, K] per-view logits -> [C, K] log-probabilities of the view average in `space`."""
    if space not in AGGREGATIONS:
        raise ValueError(f"view aggregation space {space!r} is unknown; choose one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[space](torch.as_tensor(view_logits, dtype=torch.float32))


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k highest scores (k is capped at the class count)."""
    top = scores.topk(min(k, scores.shape[-1]), dim=-1).indices
    return 100.0 * (top == labels[:, None]).any(dim=-1).double().mean().item()


def mean_class_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of each class present in `labels`, averaged over those classes (percentage)."""
    correct = (scores.argmax(dim=-1) == labels).double()
    totals = torch.bincount(labels).double()
    hits = torch.bincount(labels, weights=correct, minlength=len(totals))
    present = totals > 0
    return 100.0 * (hits[present] / totals[present]).mean().item()


def bootstrap_interval(
    correct: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy of a boolean vector (percentages).

    Resampling n items with replacement draws a Binomial(n, k/n) number of correct ones, so the
    bootstrap distribution of the mean is sampled exactly without materialising n x resamples indices.
    """
    n = len(correct)
    rng = np.random.default_rng(seed)
    means = rng.binomial(n, np.mean(correct), size=resamples) / n
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return 100.0 * float(low), 100.0 * float(high)


def paired_bootstrap(
    values: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-clip `values` (e.g. one run's correct minus
    another's on the same clips): clips are resampled, so both runs keep their pairing. Percentages."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 22) // max(len(values), 1))  # resamples at a time: small index arrays
    means = []
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, len(values), size=(min(chunk, resamples - start), len(values)))
        means.append(values[picks].mean(axis=1))
    means = np.concatenate(means)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return 100.0 * float(low), 100.0 * float(high)


def clip_outcomes(
    clip_ids: Sequence[str],
    view_logits: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    space: str = "logit",
) -> dict[str, Any]:
    """Whether each test clip's view-averaged top-1 is right, compactly for a run record: the clip
    count, a SHA-256 of the ordered clip ids (runs pair only on the same clips) and the bits, packed."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    correct = (aggregate_views(view_logits, space).argmax(dim=-1) == labels).numpy()
    return {
        "count": len(clip_ids),
        "ids_sha256": hashlib.sha256("\n".join(clip_ids).encode()).hexdigest(),
        "correct": np.packbits(correct).tobytes().hex(),
    }


def read_outcomes(entry: dict[str, Any]) -> np.ndarray:
    """The boolean per-clip vector `clip_outcomes` packed."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(entry["correct"]), dtype=np.uint8))
    return bits[: entry["count"]].astype(bool)


ORIGINAL_TEST_SEED = 1024  # the seed `attentive_probe.py` gives its test loader


def original_test_reads(num_clips: int, rank_batch: int, ranks: int, epoch: int,
                        seed: int = ORIGINAL_TEST_SEED) -> np.ndarray:
    """The test clips (indices into the list, repeats kept) that the original suite's test loader reads in
    its evaluation number `epoch` (0-based) over `ranks` processes of `rank_batch` clips a batch.

    Its `VideoExternalSource` (`dataloader/ap_dataloader_dali.py`) permutes the whole list on every rank
    with `default_rng(seed + rank + epoch)` and reads positions `shard * rank` onwards of that permutation,
    for `shard // rank_batch` whole batches, where `shard = num_clips // ranks`; its accuracy is then over
    all ranks' reads. So each evaluation reads about 1 - (1 - 1/ranks)^ranks of the clips (66% at 8),
    some several times, and a different subset each epoch.
    """
    shard = num_clips // ranks
    length = shard // rank_batch * rank_batch
    perms = [np.random.default_rng(seed=seed + rank + epoch).permutation(num_clips) for rank in range(ranks)]
    return np.concatenate([perm[shard * rank : shard * rank + length] for rank, perm in enumerate(perms)])


@dataclass(frozen=True)
class Metrics:
    top1: float
    top5: float
    mean_class: float
    top1_low: float  # bootstrap interval on top-1
    top1_high: float
    nll: float
    num_clips: int


def classification_metrics(
    view_logits: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    space: str = "logit",
    resamples: int = 1000,
    seed: int = 0,
) -> Metrics:
    """All metrics of [C, V, K] per-view logits against [C] labels."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    logp = aggregate_views(view_logits, space)
    correct = (logp.argmax(dim=-1) == labels).numpy()
    low, high = bootstrap_interval(correct, resamples, seed)
    return Metrics(
        top1=100.0 * float(correct.mean()),
        top5=topk_accuracy(logp, labels, 5),
        mean_class=mean_class_accuracy(logp, labels),
        top1_low=low,
        top1_high=high,
        nll=-logp.gather(1, labels[:, None]).mean().item(),
        num_clips=len(labels),
    )


def per_view_top1(view_logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> list[float]:
    """Top-1 of each view on its own (how much the averaging adds)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    return [topk_accuracy(view_logits[:, v], labels, 1) for v in range(view_logits.shape[1])]


@torch.inference_mode()
def predict(
    heads: Sequence[nn.Module],
    features: Features,
    clips: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits of every probe for every view of `clips`: [P, C, V, K] float32 on the CPU.

    A module gives one probe's logits [B, K] or a stacked grid's [P_i, B, K] (`probe.training.grid`); P counts
    them all, in order. Each batch of stored tokens is read once and shared by all modules. With several
    processes each predicts every world_size-th clip and all receive all clips, each exactly once (no
    padding).
    """
    mine = distributed.shard(len(clips))
    local = _predict(heads, features, np.asarray(clips)[mine], torch.device(device), batch_size)
    return distributed.gather_rows(local.transpose(0, 1), mine, len(clips)).transpose(0, 1).contiguous()


def _predict(
    heads: Sequence[nn.Module], features: Features, clips: np.ndarray, device: torch.device, batch_size: int
) -> torch.Tensor:
    views = features.num_views
    if not len(clips):
        return torch.empty(sum(getattr(head, "num_probes", 1) for head in heads), 0, views, 0)
    pair_clips, pair_views = np.repeat(clips, views), np.tile(np.arange(views), len(clips))
    outputs: list[list[torch.Tensor]] = [[] for _ in heads]
    for head in heads:
        head.eval()
    for start in range(0, len(pair_clips), batch_size):
        sl = slice(start, start + batch_size)
        batch = features.batch(pair_clips[sl], pair_views[sl]).to(device)
        for out, head in zip(outputs, heads, strict=True):
            with autocast(device):
                logits = head(batch.tokens, batch.positions, batch.mask).float().cpu()
            out.append(logits if logits.ndim == 3 else logits[None])
    probes = torch.cat([torch.cat(out, dim=1) for out in outputs])
    return probes.view(len(probes), len(clips), views, -1)
