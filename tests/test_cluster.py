"""Sweeps through Hydra's submitit launcher (`hydra/launcher=submitit_local`: the jobs SLURM would get, as
local processes): the same records and report as the basic launcher, and a killed job that, sent again,
keeps its finished feature shards and probe epochs and finishes with the same record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe.report.main import write_report
from tests.test_run import small_overrides

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["backbone=onevision_tiny,dinov2_tiny", "sampling=uniform,random"]


def _ovprobe(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "probe.run", "-m", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


def _small(tmp: Path, results: str, *extra: str) -> list[str]:
    overrides = small_overrides(tmp, *extra)
    return [o for o in overrides if not o.startswith(("sampling=", "results_dir="))] + [
        f"results_dir={tmp / results}"]


def _jobs(sweep_dir: Path) -> list[Path]:
    """The submitit job folders of a sweep (`.submitit/<job id>`; a local job's id is its process id)."""
    return sorted(p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())


def _summary(out: str) -> list[str]:
    """The lines of the runs table an invocation prints at its end."""
    return [line for line in out.splitlines() if line.startswith("| ") or line.startswith("|---")]


def _tables(folder: Path, out: Path) -> str:
    report = write_report([folder], out, [], draw=False)
    return report.split("\n", 1)[1]  # the first line names the folder


def test_a_sweep_through_submitit_local_reports_as_the_basic_launcher(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    process = _ovprobe("hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}", *SWEEP,
                       *_small(tmp_path, "submitit"))
    summary = _summary(_finish(process))
    assert len(summary) == 2 + 4  # the sender prints the table of its jobs' runs, as the basic launcher
    jobs = _jobs(sweep_dir)
    assert len(jobs) == 4  # one job a run, each its own process that returned a result
    assert all((job / f"{job.name}_0_result.pkl").is_file() for job in jobs)
    assert len({job.name for job in jobs} | {str(process.pid)}) == 5
    records = sorted((tmp_path / "submitit").glob("*/record.json"))
    assert len(records) == 4

    basic = _finish(_ovprobe(*SWEEP, *_small(tmp_path, "basic")))  # the same sweep, one run after another
    assert _summary(basic) == summary
    assert _tables(tmp_path / "submitit", tmp_path / "r1") == _tables(tmp_path / "basic", tmp_path / "r2")
    for path in records:  # the same run ids, and the same numbers
        record = json.loads(path.read_text())
        twin = json.loads((tmp_path / "basic" / path.parent.name / "record.json").read_text())
        assert twin["metrics"]["test"] == record["metrics"]["test"]


def _wait_for(pattern: str, root: Path, process: subprocess.Popen, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.02)
    raise AssertionError(f"no {pattern} under {root} within {timeout} s")


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


def _kill_job(process: subprocess.Popen, sweep_dir: Path) -> None:
    """SIGKILL the sweep's job (a local job's id is its controller's process, which starts the task
    processes) as a node failure would, then wait for its sender, which fails."""
    (job,) = _jobs(sweep_dir)
    for pid in [*_descendants(int(job.name)), int(job.name)]:
        os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=300)
    assert process.returncode != 0


def test_a_killed_job_sent_again_keeps_its_shards_and_epochs_and_finishes_the_same(tmp_path: Path) -> None:
    overrides = _small(tmp_path, "results", "backbone=onevision_tiny", "sampling=uniform",
                       "probe.recipe.epochs=20")
    cache = tmp_path / "cache"

    first = _ovprobe("hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep1'}", *overrides)
    shard = _wait_for("features/*train*/shard_00000.json", cache, first)  # killed during extraction
    _kill_job(first, tmp_path / "sweep1")
    kept = {p: p.stat().st_mtime_ns for p in shard.parent.glob("shard_00000.*")}

    second = _ovprobe("hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep2'}", *overrides)
    _wait_for("probes/*/grid.pt", cache, second)  # killed during probe training, after an epoch
    _kill_job(second, tmp_path / "sweep2")
    assert not list((tmp_path / "results").glob("*/record.json"))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished shard was not written again

    _finish(_ovprobe("hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep3'}", *overrides))
    (log,) = (tmp_path / "sweep3").glob("0/run.log")
    assert "resuming probe training from" in log.read_text()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    (path,) = (tmp_path / "results").glob("*/record.json")
    resumed = json.loads(path.read_text())

    # Uninterrupted, from the same shards, in a job process as well (threads as in the others).
    _finish(_ovprobe("hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep4'}", *overrides,
                     "on_existing=new"))
    fresh = json.loads((path.parent.with_name(path.parent.name + "-r2") / "record.json").read_text())
    assert resumed["metrics"]["curves"] == fresh["metrics"]["curves"]
    assert resumed["metrics"]["test"] == fresh["metrics"]["test"]


@pytest.mark.parametrize("resources, gpus, cpus",
                         [("vit_large", 1, 10), ("vit_giant", 1, 16), ("cpu", 0, 16)])
def test_slurm_launcher_takes_its_resources_from_a_group_a_site_overrides(
        resources: str, gpus: int, cpus: int) -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module("probe.conf", version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", f"hydra/launcher/resources={resources}", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.cpus_per_task, launcher.partition) == (gpus, cpus, "gpu")
    assert launcher.tasks_per_node == 1 and launcher.max_num_timeout == 3
