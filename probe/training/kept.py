"""The selected probe of a run, kept in its results folder: `probe.safetensors` (the weights) and
`probe.json` (the head config and what the probe was trained on), and loaded back to be evaluated
on another split or task without training (`ovprobe ... probe.from_run=<run-id>`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from probe.training.train import HeadConfig

WEIGHTS = "probe.safetensors"
META = "probe.json"


@dataclass
class StoredProbe:
    head: HeadConfig
    embed_dim: int
    num_classes: int
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]  # backbone, task, sampling, selection of the run that trained it
    run_dir: Path

    def build(self) -> torch.nn.Module:
        model = self.head.build(self.embed_dim, self.num_classes)
        model.load_state_dict(self.state)
        return model.eval()


def probe_files(head: HeadConfig, embed_dim: int, num_classes: int, state: dict[str, torch.Tensor],
                meta: dict[str, Any]) -> dict[str, str | bytes]:
    """The two files (name -> content) that keep a trained probe beside its record."""
    about = {"head": asdict(head), "embed_dim": embed_dim, "num_classes": num_classes, **meta}
    weights = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    return {WEIGHTS: weights, META: json.dumps(about, indent=2, default=str)}


def load_probe(results_dir: str | Path, run: str) -> StoredProbe:
    """The probe kept by run `run` (a run id under `results_dir`, or a run folder)."""
    folder = Path(run) if Path(run).is_dir() else Path(results_dir) / run
    meta_file, weights = folder / META, folder / WEIGHTS
    if not (meta_file.is_file() and weights.is_file()):
        raise FileNotFoundError(
            f"probe.from_run={run}: {folder} holds no {META} and {WEIGHTS}; give the id of a finished run "
            f"under results_dir={results_dir} (runs written before probes were kept have none)"
        )
    meta = json.loads(meta_file.read_text())
    head = meta.pop("head")
    return StoredProbe(HeadConfig(**head), meta.pop("embed_dim"), meta.pop("num_classes"),
                       load_file(weights), meta, folder)
