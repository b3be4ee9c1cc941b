"""Colour jitter of training views, with the original suite's parameters (its DALI video loader).

The original OneVision-Encoder attentive-probe loader (`dataloader/ap_dataloader_dali.py`, in the
revisions where the block is active) applies to every training clip, all frames alike, in this order:
brightness/contrast with p=0.8 (contrast x U(0.6, 1.4) about mid-grey, brightness U(-0.125, 0.125)),
saturation x U(0.6, 1.4) with p=0.8, hue U(-0.2, 0.2) degrees with p=0.8, and RGB->BGR with p=0.1.
Each DALI step writes uint8, so each step here rounds and clips too.

One fact needs a choice: DALI's `brightness` argument is a *multiplier* (its additive term is
`brightness_shift`), so the loader as written multiplies pixels by U(-0.125, 0.125), which turns 80% of
training clips nearly black. `brightness="shift"` (our default) reads the range as the additive shift it
evidently was meant to be (+-12.5% of the range); `brightness="multiplier"` does what the code computes.
Later revisions of that loader comment the whole block out (`ColorJitter(enabled=False)`). The record
names the setting that ran. Saturation and hue act on the chroma of YIQ, as DALI's colour operators do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
BRIGHTNESS_MODES = ("shift", "multiplier")


@dataclass(frozen=True)
class ColorJitter:
    """The jitter's probabilities and ranges (defaults: the original loader's)."""

    enabled: bool = True
    p_brightness_contrast: float = 0.8
    brightness: tuple[float, float] = (-0.125, 0.125)
    brightness_mode: str = "shift"  # shift | multiplier (see the module docstring)
    contrast: tuple[float, float] = (0.6, 1.4)
    p_saturation: float = 0.8
    saturation: tuple[float, float] = (0.6, 1.4)
    p_hue: float = 0.8
    hue_degrees: tuple[float, float] = (-0.2, 0.2)
    p_bgr: float = 0.1

    def __post_init__(self) -> None:
        if self.brightness_mode not in BRIGHTNESS_MODES:
            raise ValueError(f"color jitter brightness_mode={self.brightness_mode!r}; choose one of "
                             f"{', '.join(BRIGHTNESS_MODES)}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ColorJitter:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """One clip's parameters: every probability and range is drawn, skipped steps are None."""
        def maybe(p: float, *ranges: tuple[float, float]) -> list[float] | None:
            hit = rng.random() < p
            values = [float(rng.uniform(*r)) for r in ranges]
            return values if hit and self.enabled else None

        bc = maybe(self.p_brightness_contrast, self.brightness, self.contrast)
        sat = maybe(self.p_saturation, self.saturation)
        hue = maybe(self.p_hue, self.hue_degrees)
        bgr = bool(rng.random() < self.p_bgr) and self.enabled
        return {
            "brightness": None if bc is None else bc[0], "contrast": None if bc is None else bc[1],
            "saturation": None if sat is None else sat[0], "hue_degrees": None if hue is None else hue[0],
            "bgr": bgr,
        }

    def apply(self, frames: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """Jitter uint8 frames `[..., 3]` (RGB) with drawn `params`; returns uint8."""
        x = frames.numpy().astype(np.float32)
        if params["contrast"] is not None:
            x = 128.0 + params["contrast"] * (x - 128.0)
            shift = self.brightness_mode == "shift"
            x = x + params["brightness"] * 255.0 if shift else x * params["brightness"]
            x = _u8(x)
        chroma = np.eye(3)
        if params["saturation"] is not None:
            chroma = np.diag([1.0, params["saturation"], params["saturation"]]) @ chroma
            x = _u8(_in_yiq(x, chroma))
        if params["hue_degrees"] is not None:
            a = math.radians(params["hue_degrees"])
            rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
            x = _u8(_in_yiq(x, rot))
        if params["bgr"]:
            x = x[..., ::-1]
        return torch.from_numpy(np.ascontiguousarray(x).astype(np.uint8))


def _in_yiq(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a linear map of YIQ space to RGB pixels."""
    m = (_YIQ_TO_RGB @ matrix @ _RGB_TO_YIQ).astype(np.float32)
    return x @ m.T


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255)


def summarise(draws: list[dict[str, Any]]) -> dict[str, Any]:
    """How often each step ran and the range of its drawn values, over `draws` (for the run record)."""
    out: dict[str, Any] = {"views": len(draws)}
    for key in ("brightness", "contrast", "saturation", "hue_degrees"):
        values = [d[key] for d in draws if d[key] is not None]
        out[key] = {"applied": len(values) / max(len(draws), 1),
                    "min": min(values, default=None), "max": max(values, default=None)}
    out["bgr"] = {"applied": sum(d["bgr"] for d in draws) / max(len(draws), 1)}
    return out
