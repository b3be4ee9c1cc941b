"""Several processes, one run: the launch environment, gathering each clip once, data-parallel probe
training equal to one process, and a 2-process `ovprobe` under torchrun (gloo) killed and resumed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_run import small, small_overrides

from probe import distributed
from probe.run.main import run
from probe.store.features import ArrayFeatures
from probe.training.evaluate import predict
from probe.training.train import HeadConfig, Recipe, train_probe_grid

# --- the launch ----------------------------------------------------------------------------------


def test_launch_from_torchrun_slurm_or_nothing() -> None:
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "294"}
    assert distributed.launch_from_env(torchrun) == distributed.Launch(3, 4, 1, "n1", 294, "torchrun")
    srun = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[07-09,12],cpu3",
        "SLURM_JOB_NODELIST": "gpu[01-12],cpu3",
        "SLURM_JOB_ID": "123456",
    }
    assert distributed.launch_from_env(srun) == distributed.Launch(5, 8, 1, "gpu07", 23456, "slurm")
    chosen = distributed.launch_from_env({**srun, "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29500"})
    assert (chosen.master_addr, chosen.master_port) == ("10.0.0.2", 29500)
    # torchrun inside an srun allocation: torchrun's variables win.
    assert distributed.launch_from_env({**srun, **torchrun}).launcher == "torchrun"
    # The batch script of `sbatch --ntasks=8` (no srun step) is one process, as is no launcher at all.
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    assert distributed.launch_from_env(batch) == distributed.Launch()
    assert distributed.launch_from_env({}) == distributed.Launch()
    assert distributed.first_host("rack[1-2]-n[03,05]") == "rack1-n03"
    assert distributed.first_host("login") == "login"


def test_one_process_has_no_process_group() -> None:
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    rows = torch.arange(6.0).view(3, 2)
    assert distributed.gather_rows(rows, distributed.shard(3), 3) is rows
    assert distributed.on_main(lambda: 7) == 7 and distributed.all_gather_object("x") == ["x"]


def test_assemble_puts_every_item_once() -> None:
    n, world = 7, 2
    indices = [torch.arange(r, n, world) for r in range(world)]
    rows = [10.0 * i[:, None].float().expand(-1, 3) for i in indices]
    out = distributed.assemble(indices, rows, n)
    assert out[:, 0].tolist() == [10.0 * i for i in range(n)]
    # One process with nothing (more processes than items), its empty rows of another shape.
    one = distributed.assemble([torch.tensor([0]), torch.empty(0)], [torch.ones(1, 3), torch.empty(0, 0)], 1)
    assert one.tolist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(RuntimeError, match=r"items \[2\] came more or less than once"):
        distributed.assemble([torch.tensor([0, 2]), torch.tensor([1, 2])], [torch.ones(2, 1)] * 2, 3)
    with pytest.raises(RuntimeError, match="gathered 2 rows for 3 items"):
        distributed.assemble([torch.tensor([0]), torch.tensor([1])], [torch.ones(1, 1)] * 2, 3)


# --- two processes on this machine (gloo), spawned -------------------------------------------------


def _features(num_clips: int, seed: int) -> ArrayFeatures:
    """Class = which frame holds a marker; variable real-token counts exercise the masked statistics."""
    rng = np.random.default_rng(seed)
    frames, per_frame, dim = 4, 3, 16
    labels = rng.integers(frames, size=num_clips)
    t, w = np.repeat(np.arange(frames), per_frame), np.tile(np.arange(per_frame), frames)
    grid = np.stack([t, np.zeros(12, int), w], -1)
    tokens = (5.0 + rng.normal(size=(num_clips, 2, 12, dim))).astype(np.float32)
    tokens[np.arange(num_clips), :, :] += 2.0 * (grid[None, None, :, 0] == labels[:, None, None])[..., None]
    positions = np.broadcast_to(grid, (num_clips, 2, 12, 3)).astype(np.int32)
    lengths = rng.integers(8, 13, size=(num_clips, 2))
    return ArrayFeatures(tokens, positions, labels, lengths=lengths)


# 41 clips, 8 for validation: 33 in batches of 8, the last of one clip (one process gets none).
TRAIN, TEST = (41, 1), (7, 2)  # (clips, seed); 7 test clips: an odd number to split between 2
HEAD = HeadConfig(norm="batch", positions="rope", temporal_slots=4, num_heads=2)
RECIPE = Recipe(lrs=(3e-3,), wds=(0.0, 0.05), epochs=2, batch_size=8, val_fraction=0.2, bootstrap=20)


class MaskedMean(torch.nn.Module):
    """A fixed head: a linear map of the mean real token (the same on every process)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 3)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-1, 1, 48).view(3, 16))
            self.proj.bias.zero_()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj((tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


CLIPS = np.array([6, 0, 3, 5, 1, 2, 4])  # an odd number of clips, out of order


def _train() -> dict:
    result = train_probe_grid(_features(*TRAIN), _features(*TEST), 4, HEAD, RECIPE, progress=False)
    return {
        "record": {k: v for k, v in result.to_dict().items() if k != "train_seconds"},
        "logits": result.test_view_logits,
        "predicted": predict([MaskedMean()], _features(*TEST), CLIPS, batch_size=3),
    }


def _worker(rank: int, port: int, out: Path) -> None:
    # Launched as `srun` would (the torchrun path is the end-to-end test's).
    os.environ.update(
        SLURM_PROCID=str(rank),
        SLURM_STEP_NUM_TASKS="2",
        SLURM_LOCALID=str(rank),
        SLURM_STEP_NODELIST="localhost",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"))
    shapes = [tuple(p.shape) for p in distributed.all_gather_rows(torch.ones(rank, 3))]
    try:
        distributed.on_main(lambda: 1 / 0)
        failure = None
    except ZeroDivisionError as err:
        failure = str(err)
    trained = _train()  # AdamW: torch._dynamo is in use, which once kept the group alive past shutdown
    distributed._shutdown()  # as at exit
    torch.save({**trained, "shapes": shapes, "failure": failure, "left": _gloo_threads()}, out / f"{rank}.pt")


def _gloo_threads() -> list[str]:
    """This process's threads that gloo's process group runs (named by torch), from /proc."""
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    return [n for n in names if "gloo" in n or "tcpstore" in n]


def test_two_processes_train_and_predict_like_one(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, tmp_path), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]
    alone = _train()
    for r in ranks:
        # Every process holds every clip once, in the asked order, as one process predicts them.
        torch.testing.assert_close(r["predicted"], alone["predicted"], rtol=0, atol=0)
        assert r["shapes"] == [(0, 3), (1, 3)]
        assert r["failure"] == "division by zero"  # process 0's exception, raised on both
        # The group is freed at exit, its threads joined: a gloo thread left running while the interpreter
        # finalises can abort the process (SIGABRT) after a finished run.
        assert r["left"] == []
        torch.testing.assert_close(r["logits"], alone["logits"], rtol=1e-4, atol=1e-5)
        for name, curve in alone["record"]["curves"].items():
            for mine, theirs in zip(r["record"]["curves"][name], curve, strict=True):
                assert mine["val_top1"] == theirs["val_top1"]
                for key in ("train_loss", "val_loss", "lr"):
                    assert mine[key] == pytest.approx(theirs[key], rel=1e-5)
        assert r["record"]["selected"] == alone["record"]["selected"]
        assert r["record"]["test"]["top1"] == alone["record"]["test"]["top1"]


# --- `ovprobe` under torchrun: 2 processes, killed and resumed, against 1 process ----------------

# `ovprobe` with a kill switch, as a scheduler or a crash would stop it: KILL=shard:R makes process R
# SIGKILL itself right after writing its first feature shard; KILL=checkpoint:R makes process R kill
# the whole job (torchrun and every process) right after writing the first probe checkpoint.
LAUNCHER = """
import os, signal, sys
import probe.store.features, probe.training.train
from probe.run.main import main

def kill_job():
    agent = os.getppid()
    tasks = os.listdir(f"/proc/{agent}/task")
    workers = [int(p) for t in tasks for p in open(f"/proc/{agent}/task/{t}/children").read().split()]
    for pid in [agent, *workers]:
        os.kill(pid, signal.SIGKILL)

def then(owner, name, action):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        action()
        return out
    setattr(owner, name, wrapped)

what, _, rank = os.environ.get("KILL", "").partition(":")
if rank == os.environ["RANK"] and what == "shard":
    then(probe.store.features._ShardWriter, "write", lambda: os.kill(os.getpid(), signal.SIGKILL))
if rank == os.environ["RANK"] and what == "checkpoint":
    then(probe.training.train, "_save_checkpoint", kill_job)
sys.argv[0] = "ovprobe"
main()
"""


def _torchrun(tmp: Path, overrides: list[str], kill: str = "") -> subprocess.CompletedProcess:
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "KILL": kill, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    return subprocess.run(
        [*command, str(launcher), *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


def _files(root: Path, finished_shards: bool = False) -> dict[str, tuple[int, int]]:
    """Feature-store files under `root` (all, or those of shards with their commit mark): (inode,
    modification time), to tell rewritten files."""
    files = [f for f in root.glob("features/*/*") if f.is_file() and not f.name.startswith(".")]  # not locks
    if finished_shards:
        done = {f.name.split(".")[0] for f in files if f.name.startswith("shard_") and f.suffix == ".json"}
        files = [f for f in files if f.name.split(".")[0] in done]
    return {str(f.relative_to(root)): (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


def _stores(root: Path) -> dict[str, dict]:
    manifests = {m.parent.name: json.loads(m.read_text()) for m in root.glob("features/*/manifest.json")}
    for m in manifests.values():
        del m["created"], m["cost"]["encode_s_per_clip"]  # measured, not computed
    return manifests


def assert_close(a: object, b: object, where: str = "") -> None:
    """Equal, floats within float tolerance."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), where
    else:
        assert a == b, where


def test_two_processes_killed_and_resumed_match_one_process(tmp_path: Path) -> None:
    # Both runs read the same generated videos; each has its own feature cache and results. The two
    # probes differ enough that selecting one is not a tie decided by float rounding.
    same = [
        f"task.args.cache_dir={tmp_path / 'task'}",
        "probe.recipe.lrs=[1e-3,3e-3]",
        "probe.recipe.wds=[0.0]",
    ]
    alone = run(small(tmp_path / "one", *same))
    two = tmp_path / "two"
    overrides = small_overrides(two, *same)

    # Process 1 dies after its first shard (shard 1 of 4 train shards); torchrun stops process 0.
    killed = _torchrun(tmp_path, overrides, kill="shard:1")
    assert killed.returncode != 0
    (train_store,) = (two / "cache" / "features").glob("*_train_*")
    assert (train_store / "shard_00001.json").is_file() and not (train_store / "manifest.json").exists()
    assert not (train_store / "shard_00003.json").exists()
    before = _files(two / "cache", finished_shards=True)

    # The whole job is killed after the first epoch's checkpoint.
    killed = _torchrun(tmp_path, overrides, kill="checkpoint:0")
    assert killed.returncode != 0
    after = _files(two / "cache")
    assert {f: after[f] for f in before} == before  # finished shards were not recomputed
    assert len(after) > len(before) and len(_stores(two / "cache")) == 2  # train and test stores complete
    assert list((two / "cache" / "probes").glob("*/grid.pt")) and not list(two.glob("results/*/record.json"))

    finished = _torchrun(tmp_path, overrides)
    assert finished.returncode == 0, finished.stdout[-3000:]
    assert "resuming probe training from" in finished.stdout and "after epoch 1" in finished.stdout
    assert _files(two / "cache") == after  # no feature recomputed
    (record_file,) = two.glob("results/*/record.json")
    record = json.loads(record_file.read_text())
    reference = json.loads((tmp_path / "one" / "results" / alone["run_id"] / "record.json").read_text())
    assert record["run_id"] == alone["run_id"]
    assert record["processes"] == {"world_size": 2, "backend": "gloo"}
    del record["metrics"]["train_seconds"], reference["metrics"]["train_seconds"]
    assert_close(record["metrics"], reference["metrics"])
    assert _stores(two / "cache") == _stores(tmp_path / "one" / "cache")  # same shards, same sha256
    assert sorted(p.name for p in (two / "results").iterdir()) == ["logs", record["run_id"]]


def test_two_processes_stream_like_one(tmp_path: Path) -> None:
    """extract.mode=stream under torchrun: each process encodes its slice of every batch; the record
    matches one process's."""
    same = [
        f"task.args.cache_dir={tmp_path / 'task'}",
        "probe.recipe.lrs=[1e-3,3e-3]",
        "probe.recipe.wds=[0.0]",
        "extract.mode=stream",
    ]
    alone = run(small(tmp_path / "one", *same))
    two = tmp_path / "two"
    finished = _torchrun(tmp_path, small_overrides(two, *same))
    assert finished.returncode == 0, finished.stdout[-3000:]
    (record_file,) = two.glob("results/*/record.json")
    record = json.loads(record_file.read_text())
    reference = json.loads((tmp_path / "one" / "results" / alone["run_id"] / "record.json").read_text())
    assert record["processes"] == {"world_size": 2, "backend": "gloo"}
    assert record["protocol"]["extract_mode"] == "stream"
    del record["metrics"]["train_seconds"], reference["metrics"]["train_seconds"]
    assert_close(record["metrics"], reference["metrics"])
