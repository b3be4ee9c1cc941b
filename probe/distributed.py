"""Several processes, one run: the launch (torchrun or SLURM `srun`) and the few collectives the suite uses.

A process learns its place from the environment: torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`
(its rendezvous sets `MASTER_ADDR`/`MASTER_PORT`), else SLURM's `SLURM_PROCID`,
`SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID` for tasks started by `srun` (the main address is
`MASTER_ADDR` if set, else the first host of the step's node list; the port `MASTER_PORT`, else
one derived from the job id). Without either, or with one process, no process group is created and
every helper here is a no-op: a plain run pays nothing.

With several, `init` joins one process group for the life of the process (NCCL on CUDA, each process
on `cuda:LOCAL_RANK`; gloo on CPU). Nothing assumes one node, but all processes must see the same
`cache_dir` (feature shards, probe checkpoints) and process 0 writes the records in `results_dir`.
Collectives wait for `$OVPROBE_DIST_TIMEOUT_MIN` minutes (default 60): one process may still be
extracting its last shard while the others wait for it.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")
TIMEOUT_ENV = "OVPROBE_DIST_TIMEOUT_MIN"
SLURM_PORT_BASE = 20000  # srun without MASTER_PORT: 20000 + job id mod 20000, the same for every task


@dataclass(frozen=True)
class Launch:
    """Where this process stands in its launch; `launcher` is "torchrun", "slurm" or "single"."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "single"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[07-09,12],cpu3` -> `gpu07`."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if first is None:
        raise ValueError(f"cannot read a host from the SLURM node list {nodelist!r}; set MASTER_ADDR")
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", first.group(0))


def launch_from_env(env: Mapping[str, str] = os.environ) -> Launch:
    """This process's launch, read from the variables torchrun or srun set."""
    if "WORLD_SIZE" in env:
        port = env.get("MASTER_PORT")
        return Launch(
            int(env.get("RANK", 0)),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR"),
            int(port) if port else None,
            "torchrun",
        )
    if int(env.get("SLURM_STEP_NUM_TASKS", 1)) > 1 and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        port = env.get("MASTER_PORT") or SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", 0)) % 20000
        return Launch(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_STEP_NUM_TASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            env.get("MASTER_ADDR") or first_host(nodes),
            int(port),
            "slurm",
        )
    return Launch()


def init(device: torch.device) -> torch.device:
    """Join the launch's process group (once per process) and return the device this process uses."""
    launch = launch_from_env()
    if launch.world_size == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    # torch._dynamo, imported by the first AdamW step, keeps references to a process group that exists when
    # it is first imported, so `destroy_process_group` at exit could not free it: gloo's worker threads then
    # outlived it, and one still releasing a collective's tensors (which takes the GIL) while the
    # interpreter finalised aborted the process (SIGABRT after a finished run, 5 of 60 two-process test
    # runs). Imported before the group exists, it holds none, and the group is freed at exit.
    importlib.import_module("torch._dynamo")  # not `import torch._dynamo`: that makes `torch` local here

    backend = "nccl" if device.type == "cuda" else "gloo"
    common = dict(
        timeout=timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, 60))),
        device_id=device if device.type == "cuda" else None,
    )
    if launch.launcher == "slurm":
        dist.init_process_group(
            backend,
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            **common,
        )
    else:
        dist.init_process_group(backend, **common)  # torchrun's rendezvous (env://)
    atexit.register(_shutdown)
    return device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if dist.is_initialized() else None


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _device() -> torch.device:
    """Where collectives take their tensors: the current GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the processes, in place, and return it."""
    if world_size() == 1:
        return tensor
    buffer = tensor.to(_device())
    dist.all_reduce(buffer)
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


def all_gather_object(obj: T) -> list[T]:
    """Every process's `obj` (picklable), in rank order, on every process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(obj: T) -> T:
    """Process 0's `obj` on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _portable(err: Exception) -> Exception:
    """`err` if it survives pickling, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn()` on process 0 only; every process returns its result, or raises its exception."""
    if world_size() == 1:
        return fn()
    outcome: tuple[bool, Any] | None = None
    if is_main():
        try:
            outcome = (True, fn())
        except Exception as err:
            broadcast_from_main((False, _portable(err)))
            raise
    ok, value = broadcast_from_main(outcome)
    if not ok:
        raise value
    return value


@contextmanager
def main_first() -> Iterator[None]:
    """Process 0 runs the block first (say, to fill a cache), then the others; a failure there stops all."""
    if world_size() == 1:
        yield
        return
    if is_main():
        try:
            yield
        except Exception as err:
            broadcast_from_main(_portable(err))
            raise
        broadcast_from_main(None)
        return
    failure = broadcast_from_main(None)
    if failure is not None:
        raise failure
    yield


def shard(n: int) -> np.ndarray:
    """This process's items of `range(n)`: every world_size-th from its rank (disjoint, no padding)."""
    return np.arange(rank(), n, world_size())


def all_gather_rows(rows: torch.Tensor) -> list[torch.Tensor]:
    """Every process's `rows` (any length along dim 0; empty ones may have any shape), in rank order."""
    if world_size() == 1:
        return [rows]
    shapes = all_gather_object(tuple(rows.shape))
    shape = next((s for s in shapes if 0 not in s), tuple(rows.shape))
    length = max(s[0] for s in shapes)
    buffer = torch.zeros((length, *shape[1:]), dtype=rows.dtype, device=_device())
    if rows.numel():
        buffer[: len(rows)] = rows.to(buffer.device)
    parts = [torch.empty_like(buffer) for _ in shapes]
    dist.all_gather(parts, buffer)
    return [p[: s[0]].to(rows.device) for p, s in zip(parts, shapes, strict=True)]


def assemble(indices: list[torch.Tensor], rows: list[torch.Tensor], n: int) -> torch.Tensor:
    """Rows of items `indices[r]` from each process r, put in item order; every item exactly once."""
    index = torch.cat(indices).long()
    if not torch.equal(index.sort().values, torch.arange(n)):
        wrong = torch.nonzero(torch.bincount(index, minlength=n) != 1).flatten().tolist()
        raise RuntimeError(
            f"gathered {len(index)} rows for {n} items: items {wrong[:10]} came more or less than once"
        )
    parts = [r for r in rows if r.numel()] or rows[:1]
    values = torch.cat(parts)
    out = values.new_empty((n, *values.shape[1:]))
    out[index] = values
    return out


def gather_rows(rows: torch.Tensor, index: np.ndarray, n: int) -> torch.Tensor:
    """Each process's `rows` of items `index` (a `shard(n)`), gathered in item order on every process."""
    if world_size() == 1:
        return rows
    indices = all_gather_rows(torch.as_tensor(index, dtype=torch.int64))
    return assemble(indices, all_gather_rows(rows), n)
