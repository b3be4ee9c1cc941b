"""The GPU check: one script that runs ovprobe's CUDA path once and prints what a node does with it.

Each section runs in a fresh process (its peak memory is its own), through the code a run uses:

- extract-codec, extract-uniform: `onevision_large` with random weights (bf16 on CUDA, `dtype=auto`)
  extracting a list task of links to the fixture videos at 2,048 codec-selected patches and at 8 uniform
  frames (`probe.run.main.extract`: DataLoader workers, pinned copies, the store writer): clips/s, the
  loader wait, peak memory of the main process, of a loader worker and of the GPU, and which SDPA
  kernel the backbone's attention ran (torch's profiler on one more batch);
- grid: the stacked grid of 20 attentive probes at ViT-L width (1,024) with 400 classes, 32 clips x 2,048
  tokens a step: steps/s and peak memory;
- stream: `ovprobe` with `protocol=original` (views drawn and encoded every epoch) for 50 optimiser
  steps: steps/s and peak memory;
- two-process: the same `ovprobe` run as two processes under torchrun: nccl when two GPUs are visible
  (skipped with one), gloo on a CPU;
- attention: OneVision's forward with SDPA vs eager attention, same weights, 2,048 tokens: tokens/s of
  each, their ratio, the largest difference and the SDPA kernel.

`--size large` (the default on CUDA) is the sizes above; `--size tiny` (the default on a CPU, and what
tests/test_gpu_check.py runs) the same path with the tiny OneVision and small shapes, so the script
cannot rot before a GPU runs it. `--size large --device cpu` is the ViT-L rehearsal on CPU. Every
figure also goes to `--out` (JSON), with the device's name.

    python benchmarks/gpu_check.py [--size large|tiny] [--device cuda|cpu] [--out gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from peak import children_peak_mb, peak_mb, reset_peak

from backbones import create_backbone
from backbones.onevision import OneVisionConfig, OneVisionEncoder
from probe.run.main import ViewSampler, build_sampler, compose_config, extract, resolve_dtype, run
from probe.store.features import FeatureBatch
from probe.training.train import HeadConfig, ProbeSpec, Recipe, make_grid
from tasks import create_task

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "videos"
VIDEOS = ("cup.mp4", "tree.avi", "Megamind.avi")
SECTIONS = ("extract-codec", "extract-uniform", "grid", "stream", "two-process", "attention")


@dataclass(frozen=True)
class Size:
    backbone: str
    frames: int  # frames of the uniform views; the codec budget is as many frames' patches
    clips: int  # clips extracted per setting
    probes: int
    classes: int
    grid_batch: int
    grid_tokens: int
    grid_dim: int
    stream_clips: int
    stream_batch: int
    stream_epochs: int  # stream steps = epochs x ceil(clips / batch)
    attention_layers: int
    attention_frames: int  # x 256 patches (224 px, patch 14)


SIZES = {
    "large": Size("onevision_large", frames=8, clips=16, probes=20, classes=400, grid_batch=32,
                  grid_tokens=2048, grid_dim=1024, stream_clips=40, stream_batch=8, stream_epochs=10,
                  attention_layers=24, attention_frames=8),
    "tiny": Size("onevision_tiny", frames=2, clips=4, probes=4, classes=10, grid_batch=4, grid_tokens=64,
                 grid_dim=128, stream_clips=8, stream_batch=8, stream_epochs=2, attention_layers=1,
                 attention_frames=1),
}


# ----------------------------------------------------------------------------- measuring


def gpu_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def sdpa_kernels(call: Callable[[], Any]) -> list[str]:
    """The `aten::_scaled_dot_product_*` ops `call()` ran: which SDPA implementation (flash, efficient,
    cudnn, math, or the CPU's flash) attention took."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        call()
    return sorted({e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")})


def timed(device: torch.device, call: Callable[[], Any]) -> tuple[Any, float]:
    gpu_reset(device)
    t0 = time.perf_counter()
    out = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the sections


def list_task(work: Path, clips: int) -> list[str]:
    """Overrides for a list task of 3 classes whose train and test splits are `clips` links each to the
    fixture videos."""
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    lists = []
    for split in ("train", "test"):
        lines = []
        for i in range(clips):
            link = videos / f"{split}{i:04d}{Path(VIDEOS[i % 3]).suffix}"
            if not link.is_symlink():
                link.symlink_to(FIXTURES / VIDEOS[i % 3])
            lines.append(f"{link.name} {i % 3}")
        (videos / f"{split}.txt").write_text("\n".join(lines) + "\n")
        lists.append(f"task.args.splits.{split}={videos / f'{split}.txt'}")
    return ["task=list", *lists, f"task.args.video_root={videos}"]


def common(size: Size, device: torch.device, work: Path) -> list[str]:
    return [f"backbone={size.backbone}", "backbone.args.random_init=true", f"device={device.type}",
            f"sampling.frames_equiv={size.frames}", "progress=false", f"cache_dir={work / 'cache'}",
            f"results_dir={work / 'results'}", f"num_workers={min(8, os.cpu_count() or 1)}"]


def section_extract(sampling: str, size: Size, device: torch.device, work: Path) -> dict[str, Any]:
    config = compose_config([*common(size, device, work), *list_task(work, size.clips),
                             f"sampling={sampling}"])
    backbone = create_backbone(size.backbone, **resolve_dtype(config["backbone"]["args"], device)).to(device)
    sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
    task = create_task("list", **config["task"]["args"])
    split = config["task"]["eval_split"]
    task.clips(split)
    before = reset_peak()
    store, wall = timed(device, lambda: extract(config, backbone, task, split, sampler, train=False))
    stats = store.extraction
    main_peak, gpu_peak = peak_mb(), gpu_peak_mb(device)
    view = ViewSampler(sampler, False, 1, config["seed"])(task.clips(split)[0])[0]
    frames, positions = view.frames[None].to(device), view.positions[None].to(device)
    with torch.inference_mode():
        kernels = sdpa_kernels(lambda: backbone.encode(frames, positions))
    return {
        "setting": f"{size.backbone} random weights {backbone.feature_identity()['dtype']}, {sampling} "
                   f"{view.n_tokens} tokens, {config['num_workers']} loader workers",
        "clips": stats.clips, "tokens_per_clip": view.n_tokens, "wall_s": wall,
        "clips_per_s": stats.clips / wall,
        "seconds_per_clip": wall / stats.clips, "encode_s": stats.encode_s, "loader_wait_s": stats.wait_s,
        "main_before_mb": before, "main_peak_mb": main_peak, "worker_peak_mb": children_peak_mb(),
        "gpu_peak_mb": gpu_peak, "sdpa": kernels,
    }


def section_grid(size: Size, device: torch.device, work: Path, steps: int = 5) -> dict[str, Any]:
    specs = [ProbeSpec(f"p{i}", 1e-4 * (1 + i % 5), 0.01 * (i // 5)) for i in range(size.probes)]
    recipe = Recipe(lrs=tuple(sorted({s.lr for s in specs})), wds=tuple(sorted({s.wd for s in specs})))
    grid = make_grid(specs, size.grid_dim, size.classes, HeadConfig(), recipe, 1000, device)
    g = torch.Generator().manual_seed(0)
    b, n, d = size.grid_batch, size.grid_tokens, size.grid_dim
    batch = FeatureBatch(torch.randn(b, n, d, generator=g), torch.zeros(b, n, 3, dtype=torch.int64),
                         torch.ones(b, n, dtype=torch.bool), torch.randint(size.classes, (b,), generator=g))
    before = reset_peak()
    grid.step(batch.to(device), b)  # warm-up
    _, wall = timed(device, lambda: [grid.step(batch.to(device), b) for _ in range(steps)])
    return {"setting": f"{size.probes} probes x width {d} x {size.classes} classes, {b} clips x {n} tokens",
            "steps": steps, "steps_per_s": steps / wall, "seconds_per_step": wall / steps,
            "main_before_mb": before, "main_peak_mb": peak_mb(), "gpu_peak_mb": gpu_peak_mb(device)}


def stream_overrides(size: Size, device: torch.device, work: Path) -> list[str]:
    return [*common(size, device, work), *list_task(work, size.stream_clips), "protocol=original",
            "sampling=uniform", f"probe.recipe.batch_size={size.stream_batch}",
            f"probe.recipe.epochs={size.stream_epochs}", "probe.recipe.bootstrap=10"]


def section_stream(size: Size, device: torch.device, work: Path) -> dict[str, Any]:
    config = compose_config(stream_overrides(size, device, work))
    steps = size.stream_epochs * -(-size.stream_clips // size.stream_batch)
    before = reset_peak()
    record, wall = timed(device, lambda: run(config))
    train_s = record["timings"]["train_s"]
    return {"setting": f"protocol=original, {size.stream_clips} clips, batch {size.stream_batch}, "
                       f"{size.stream_epochs} epochs", "steps": steps, "train_s": train_s,
            "steps_per_s": steps / train_s, "wall_s": wall, "main_before_mb": before,
            "main_peak_mb": peak_mb(),
            "gpu_peak_mb": gpu_peak_mb(device)}


LAUNCH = "import sys\nfrom probe.run.main import main\nsys.argv[0] = 'ovprobe'\nmain()\n"


def section_two_process(size: Size, device: torch.device, work: Path) -> dict[str, Any]:
    """The stream section's run as two processes under torchrun: nccl on two GPUs, gloo on a CPU."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU visible; the two-process run needs 2"}
    launcher = work / "launch.py"
    work.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCH)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(launcher), *stream_overrides(size, device, work)]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"two-process run failed ({done.returncode}):\n{done.stdout[-3000:]}")
    (found,) = (work / "results").glob("*/record.json")
    record = json.loads(found.read_text())
    return {"setting": "the stream section's run as 2 processes (torchrun)", "wall_s": wall,
            "train_s": record["timings"]["train_s"], **record["processes"]}


# SDPA over eager attention at 2,048 tokens: flash/efficient kernels never materialise the 2k x 2k scores
# on a GPU; a CPU only needs not to lose.
SDPA_TARGET = {"cuda": 1.5, "cpu": 1.0}


def section_attention(size: Size, device: torch.device, work: Path, repeats: int = 3) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    sdpa = OneVisionEncoder(OneVisionConfig(num_hidden_layers=size.attention_layers)).eval()
    eager = OneVisionEncoder(OneVisionConfig(num_hidden_layers=size.attention_layers,
                                             attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    sdpa, eager = sdpa.to(device, dtype), eager.to(device, dtype)
    video = torch.randn(1, 3, size.attention_frames, 224, 224, device=device, dtype=dtype)
    tokens = size.attention_frames * 256
    rates = {}
    with torch.inference_mode():
        diff = (sdpa(video).last_hidden_state - eager(video).last_hidden_state).abs().max().item()
        for name, model in (("eager", eager), ("sdpa", sdpa)):
            _, wall = timed(device, lambda model=model: [model(video) for _ in range(repeats)])
            rates[name] = repeats * tokens / wall
        kernels = sdpa_kernels(lambda: sdpa(video))
    ratio = rates["sdpa"] / rates["eager"]
    fused = not any(k.endswith("_math") for k in kernels)
    return {"setting": f"OneVision width 1024, {size.attention_layers} layers, {tokens} tokens, "
                       f"{str(dtype).removeprefix('torch.')}", "eager_tokens_per_s": rates["eager"],
            "sdpa_tokens_per_s": rates["sdpa"], "sdpa_over_eager": ratio, "max_abs_difference": diff,
            "sdpa": kernels, "target": f"a fused kernel (not math), sdpa/eager >= {SDPA_TARGET[device.type]}",
            "met": fused and ratio >= SDPA_TARGET[device.type]}


RUNNERS = {"extract-codec": lambda *a: section_extract("codec", *a),
           "extract-uniform": lambda *a: section_extract("uniform", *a),
           "grid": section_grid, "stream": section_stream, "two-process": section_two_process,
           "attention": section_attention}


# ----------------------------------------------------------------------------- the parent


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    return f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def run_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--section", name, "--size", args.size, "--device", args.device,
               "--work", str(args.work)]
    for option in ("threads", "clips"):
        if getattr(args, option):
            command += [f"--{option}", str(getattr(args, option))]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        return {"failed": f"exit {done.returncode} (its traceback is above)"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(name: str, result: dict[str, Any]) -> str:
    cells = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in result.items() if k != "setting"]
    return f"{name:16s} {result.get('setting', '')}\n{'':16s} " + ", ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), help="default: large on CUDA, tiny on a CPU")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--clips", type=int, help="clips per extraction setting (default: the size's)")
    parser.add_argument("--out", type=Path, help="also write every figure here (JSON)")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but no CUDA device is visible; use --device cpu")
    if not FIXTURES.is_dir():
        raise SystemExit(f"gpu_check: the fixture videos {FIXTURES} are missing (the shared fixtures folder)")
    args.size = args.size or ("large" if device.type == "cuda" else "tiny")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = replace(SIZES[args.size], clips=args.clips or SIZES[args.size].clips)
    if args.section:
        print(json.dumps(RUNNERS[args.section](size, device, args.work / args.section)))
        return
    header = {"device": device_name(device), "size": args.size, **asdict(size),
              "torch": torch.__version__, "cuda": torch.version.cuda}
    print(f"gpu_check on {header['device']}, size {args.size} (torch {torch.__version__})", flush=True)
    results: dict[str, Any] = {"header": header}
    with tempfile.TemporaryDirectory(prefix="ovprobe-gpu-check-") as work:
        args.work = Path(work)
        for name in args.sections:
            results[name] = run_section(name, args)
            print(show(name, results[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    failed = [name for name, r in results.items() if "failed" in r]
    if failed:
        raise SystemExit(f"gpu_check: sections {', '.join(failed)} failed")


if __name__ == "__main__":
    main()
