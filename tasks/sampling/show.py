"""What the codec sampler keeps, as a picture.

`python -m tasks.sampling.show VIDEO --budget 2048 --out fig.png` draws sampled frames, their fused codec
maps (`tasks.decode.codec`) and the kept patches; `--controls` adds the patches random and
pixel-difference selection keep at that budget.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from tasks.decode.codec import CAMERA_MODELS, CELL, CodecConfig, CodecMaps, analyse, crop_box, patch_scores
from tasks.sampling.selection import Selection, SelectionConfig, on_slots, pixel_change, select_patches


def show(video: str | Path, out: str | Path, budget: int = 2048, size: int = 224, patch: int = 14,
         columns: int = 8, cfg: CodecConfig | None = None, selection_cfg: SelectionConfig | None = None,
         controls: bool = False, seed: int = 0) -> tuple[Path, CodecMaps, np.ndarray, Selection]:
    """Draw `columns` sampled frames, their fused saliency and the kept patches (others dimmed) to `out`;
    with `controls`, below them the patches the `random` (a draw seeded by `seed`) and `pixel_diff`
    samplers keep at the same budget from the same frames, with the same whole first frame.

    Returns (png path, maps, patch scores, selection) so callers can check what the picture shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.decode.video import crop_square, resize_shorter_side

    cfg = cfg or CodecConfig()
    video, out = Path(video), Path(out)
    grid = size // patch
    maps, pixels = analyse(video, cfg, keep=lambda f: crop_square(
        resize_shorter_side(f.to_ndarray(format="rgb24")[None], size), size)[0].numpy())
    box = crop_box(maps.frame_size, size)
    scores = patch_scores(maps, (grid, grid), box)
    selection = select_patches(scores, budget, selection_cfg or SelectionConfig(), static=maps.static,
                               contrast=maps.slot_contrast)
    kept = {"codec": _kept(selection)}
    if controls:  # the samplers `random` and `pixel_diff` on these frames (see `tasks.sampling.samplers`)
        plain = SelectionConfig(keep_first_frame=(selection_cfg or SelectionConfig()).keep_first_frame,
                                static_fallback=False)
        drawn = np.random.default_rng(seed).random((len(maps.slots), grid, grid))
        change = pixel_change(np.stack(pixels), patch)
        for name, values in (("random", drawn), ("pixel diff", change)):
            kept[name] = _kept(select_patches(on_slots(values, maps.slots, maps.num_slots), budget, plain))

    rows = np.unique(np.rint(np.linspace(0, len(maps.slots) - 1, columns)).astype(int))
    top, left, height, width = (v / CELL for v in box)
    fig, axes = plt.subplots(2 + len(kept), len(rows), figsize=(2.2 * len(rows), 2.4 * (2 + len(kept))),
                             squeeze=False)
    for col, row in enumerate(rows):
        slot = int(maps.slots[row])
        frame = pixels[row].astype(np.float32) / 255
        saliency = maps.saliency[row][int(top):math.ceil(top + height), int(left):math.ceil(left + width)]
        panels = [frame, saliency] + [_overlay(frame, mask[slot], patch) for mask in kept.values()]
        titles = [f"t={slot}  frame {maps.frame_indices[row]}", "fused saliency"] + [
            f"{name}: kept {int(mask[slot].sum())}/{grid * grid}" for name, mask in kept.items()]
        for ax, image, title in zip(axes[:, col], panels, titles, strict=True):
            shown = ax.imshow(image, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
            if image is saliency:
                saliency_image = shown
    total = scores.shape[0] * grid * grid
    fig.suptitle(f"{video.name}: {selection.budget} of {total} patches ({selection.budget / total:.1%}) "
                 f"from {len(maps.slots)} frames; signals: {maps.signals}"
                 f"{'; static fallback' if selection.static else ''}", fontsize=10)
    fig.tight_layout()
    bar = fig.colorbar(saliency_image, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01)
    bar.set_label("saliency (motion + residual, 0-1)", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")  # the colour bar's label stays in
    plt.close(fig)
    return out, maps, scores, selection


def _kept(selection: Selection) -> np.ndarray:
    """`[T, Hp, Wp]` True at the selected patches."""
    kept = np.zeros(int(np.prod(selection.grid)), bool)
    kept[selection.indices] = True
    return kept.reshape(selection.grid)


def _overlay(frame: np.ndarray, kept: np.ndarray, patch: int) -> np.ndarray:
    """`frame` (float RGB) with the patches not `kept` dimmed and the kept ones outlined."""
    mask = np.kron(kept, np.ones((patch, patch)))[..., None]
    edge = (mask[..., 0] > 0) & ~_eroded(mask[..., 0] > 0)
    overlay = frame * (0.25 + 0.75 * mask)
    overlay[edge] = (1.0, 0.85, 0.0)
    return overlay


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4 neighbours are all in `mask` (the complement marks its outline)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.sampling.show", description=__doc__.split("\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--budget", type=int, default=2048, help="patches to keep (default 2048)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--frames", type=int, default=64, help="frames sampled at linspace")
    parser.add_argument("--columns", type=int, default=8, help="frames shown")
    parser.add_argument("--camera", default="similarity", choices=sorted(CAMERA_MODELS))
    parser.add_argument("--controls", action="store_true",
                      help="also draw the patches random and pixel-difference selection keep at the budget")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random selection drawn")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: VIDEO_codec.png here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or Path(f"{args.video.stem}_codec.png")
    path, maps, _, selection = show(args.video, out, args.budget, args.size, args.patch, args.columns,
                                    CodecConfig(num_frames=args.frames, camera=args.camera),
                                    controls=args.controls, seed=args.seed)
    print(f"wrote {path}: {selection.budget} patches from {len(selection.slots)} of {len(maps.slots)} frames "
          f"(signals {maps.signals}, activity {maps.activity:.3f}{', static' if maps.static else ''})")


if __name__ == "__main__":
    main()
