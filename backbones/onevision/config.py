"""OneVision-Encoder configuration, read from and written to the released `config.json` format."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbones.weights import CheckpointError

log = logging.getLogger(__name__)

# Keys of the released config.json that describe the Hugging Face wrapper, not the model.
_WRAPPER_KEYS = {"model_type", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version"}


class OneVisionConfigError(CheckpointError, ValueError):
    """A OneVision config.json that is missing, unreadable or inconsistent."""


@dataclass
class OneVisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 448
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    layer_norm_type: str = "layer_norm"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    rope_theta: float = 10000.0
    rope_temporal_size: int | None = 64
    use_head: bool = True
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise OneVisionConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.head_dim % 32:
            raise OneVisionConfigError(
                f"head_dim = hidden_size / num_attention_heads = {self.head_dim} must be divisible by 32 "
                "for the 4:6:6 3-D RoPE; choose hidden_size and num_attention_heads accordingly"
            )
        if self.layer_norm_type not in ("layer_norm", "rms_norm"):
            raise OneVisionConfigError(
                f"layer_norm_type {self.layer_norm_type!r} is not one of 'layer_norm', 'rms_norm'"
            )
        if self.hidden_act != "gelu":
            raise OneVisionConfigError(f"hidden_act {self.hidden_act!r} is not supported; use 'gelu'")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise OneVisionConfigError(
                f"attn_implementation {self.attn_implementation!r} is not one of 'sdpa', 'eager'"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> OneVisionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known - _WRAPPER_KEYS
        if unknown:
            log.warning("%s: ignoring unknown OneVision config fields %s", source, sorted(unknown))
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> OneVisionConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise OneVisionConfigError(f"cannot read OneVision config {path}: {err}") from err
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("attn_implementation")
        values["model_type"] = "onevision_encoder"
        values["architectures"] = ["OneVisionEncoderModel"]
        return values
