"""Loading released OneVision-Encoder checkpoints (`config.json` + safetensors), unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from backbones.onevision.config import OneVisionConfig
from backbones.weights import (
    check_state_dict,
    load_state_dict,
    parse_dtype,
    resolve_checkpoint_dir,
    safetensors_files,
)


def load_pretrained(cls, folder_or_repo_id: str | Path, dtype: torch.dtype | str | None = None, **overrides):
    folder = resolve_checkpoint_dir(folder_or_repo_id)
    config_values = OneVisionConfig.from_json(folder / "config.json").to_dict()
    config = OneVisionConfig.from_dict({**config_values, **overrides}, source=str(folder / "config.json"))
    files = safetensors_files(folder)
    state = load_state_dict(files)
    with torch.device("meta"):
        model = cls(config)
    check_state_dict(model.state_dict(), state, str(files[0] if len(files) == 1 else folder))
    model.load_state_dict(state, assign=True)
    model.checkpoint_files = files
    return model.to(parse_dtype(dtype)).eval()


def save_pretrained(model, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
