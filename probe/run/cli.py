"""`ovprobe` on the command line: Hydra's entry, its callbacks (the results folder checked first, one
summary table per invocation) and one-line user errors.

Kept apart from `probe.run.main` and free of torch at import time: a mistyped key or a conflicting pair
is refused by Hydra or `check_overrides` before the backbones, tasks and torch are imported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

from probe.files import atomic_write_text
from probe.record import ResultsDirError, check_writable
from probe.run.schema import ConfigError, check_checkpoint, check_overrides, check_run_config

log = logging.getLogger("ovprobe")


# `ovprobe` with no arguments: the embedded default, a comparison of samplers on the generated task.
# Two learning rates, not the generated task's three: 1e-4 was never selected for any of the three
# samplers, and the default must finish in 10 minutes on 2 CPU cores (README "What ./dev ovprobe does").
EMBEDDED_DEFAULT = ("--multirun", "sampling=uniform,codec,random", "probe.recipe.lrs=[1.0e-3,3.0e-4]")


class CheckResultsDir(Callback):
    """Hydra callback: a results_dir that cannot be written or is full stops the invocation with ovprobe's
    message before Hydra writes its own files there (and fails with an OSError of its own)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        results = Path(config.results_dir)
        if not results.exists():  # made by this invocation: removed again if nothing goes into it
            _MADE.add(results.resolve())
        if _rank() == 0:
            try:
                check_writable(results)
            except ResultsDirError as err:
                raise SystemExit(f"ovprobe: {err}") from err

    on_multirun_start = on_run_start


class PrintSummary(Callback):
    """Hydra callback: print one table of the runs of an invocation (a sweep or a single run), and the
    runs of a sweep that failed, each with its one-line reason. Under submitit's launchers each job runs
    in a process of its own, which hands its line to the sending process through its log folder."""

    HANDOVER = "summary.json"  # a launcher job's line of the summary, in its log folder, for the sender

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.failed: list[tuple[list[str], str]] = []  # (the job's overrides, why it failed)
        self.overrides: list[list[str]] = []  # every job's, to name a failed job by what varies
        self.pid = os.getpid()  # the sending process; submitit's launchers run each job in another

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        overrides = list(job_return.overrides or [])
        value = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        failed = value.reason if isinstance(value, JobFailure) else None
        row = None
        if value is not None and failed is None:
            from probe.report.results import record_row

            row = record_row(value)
        if os.getpid() != self.pid:  # a launcher's job process: hand the line over to the sender
            if _rank() == 0:
                folder = Path(config.hydra.runtime.output_dir)
                folder.mkdir(parents=True, exist_ok=True)
                text = json.dumps({"overrides": overrides, "row": row, "failed": failed}, default=str)
                atomic_write_text(folder / self.HANDOVER, text)
            return
        self._add(overrides, row, failed)

    def _add(self, overrides: list[str], row: dict[str, Any] | None, failed: str | None) -> None:
        self.overrides.append(overrides)
        if failed is not None:
            self.failed.append((overrides, failed))
        elif row is not None:
            self.rows.append(row)

    def _collect_handovers(self, sweep_dir: Path) -> None:
        """The lines the sweep's job processes handed over (submitit launchers), in job order."""
        found = [p for p in sweep_dir.glob(f"*/{self.HANDOVER}") if p.parent.name.isdigit()]
        for path in sorted(found, key=lambda p: int(p.parent.name)):
            line = json.loads(path.read_text())
            self._add(line["overrides"], line["row"], line["failed"])
            path.unlink()
            _remove_if_empty(path.parent, keep=set())

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        from probe.report.results import format_table

        if _rank() != 0:
            return
        if self.rows:
            print("\n" + format_table(self.rows))
        if self.failed:
            shared = set.intersection(*(set(o) for o in self.overrides))
            lines = [f"{' '.join(o for o in job if o not in shared)}: {why}" for job, why in self.failed]
            print(f"\n{len(lines)} run(s) failed:\n" + "\n".join(f"  {line}" for line in lines))
            FAILED.extend(lines)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._collect_handovers(Path(config.hydra.sweep.dir))
        self.on_run_end(config)
        _remove_if_empty(Path(config.hydra.sweep.dir), keep={"multirun.yaml"})


@dataclass
class JobFailure:
    """A sweep's job that stopped on a user error: the sweep goes on and lists it at the end."""

    reason: str


FAILED: list[str] = []  # the invocation's failed sweep jobs, for the exit status
_MADE: set[Path] = set()  # results folders that did not exist when the invocation started


def _remove_if_empty(folder: Path, keep: set[str], empty_files: set[str] = frozenset()) -> None:
    """Drop a log folder that holds nothing but Hydra's own bookkeeping (`keep`, `.hydra`) and, of
    `empty_files`, only empty ones."""
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    empty = {n for n in names & set(empty_files) if (folder / n).stat().st_size == 0}
    if names <= keep | empty | {".hydra"}:
        shutil.rmtree(folder, ignore_errors=True)
        logs = folder.parent
        if logs.name == "logs" and not any(logs.iterdir()):
            logs.rmdir()  # the invocation's first log folder: no empty `logs/` either
            if logs.parent.resolve() in _MADE and not any(logs.parent.iterdir()):
                logs.parent.rmdir()  # nor a results folder this invocation made for nothing


# Errors that mean "fix your input": reported as one clear line instead of a traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from backbones.registry import UnknownBackboneError
    from backbones.weights import CheckpointError
    from probe.files import DiskFullError, InUseError
    from probe.record import ResultsDirError, RunExistsError
    from probe.store.features import NonFiniteTokensError, StoreTooLargeError
    from probe.training.train import NonFiniteLossError
    from tasks import AnnotationError, VideoDecodeError

    return (
        ConfigError,
        UnknownBackboneError,
        CheckpointError,
        ResultsDirError,
        RunExistsError,
        AnnotationError,
        VideoDecodeError,
        DiskFullError,
        NonFiniteLossError,
        InUseError,
        NonFiniteTokensError,
        StoreTooLargeError,
    )


def _is_user_error(err: BaseException) -> bool:
    """Whether `err` means "fix your input"; ConfigError first (the others' modules import torch)."""
    return isinstance(err, ConfigError) or (isinstance(err, Exception) and isinstance(err, _user_errors()))


def _quiet_secondary_process(rank: int) -> None:
    """Processes other than 0 keep Hydra's files in a scratch folder of their own (one per user and
    rank, reused, so killed jobs leave nothing behind), never in results_dir, and leave announcing the
    jobs to process 0."""
    scratch = Path(tempfile.gettempdir()) / f"ovprobe-hydra-{os.getuid()}-rank{rank}"
    sys.argv += [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra/hydra_logging=disabled"]


def _rank() -> int:
    """This process's rank: 0 unless torchrun or srun launched it (only then is `probe.distributed`, and
    with it torch, imported)."""
    if not {"WORLD_SIZE", "SLURM_PROCID"} & set(os.environ):
        return 0
    from probe import distributed

    return distributed.launch_from_env().rank


def main() -> None:
    """`ovprobe [overrides]`: one run; `ovprobe -m ...`: a sweep; no arguments: the embedded default."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf

    rank = _rank()
    if len(sys.argv) == 1:
        sys.argv += EMBEDDED_DEFAULT
    if rank > 0:
        _quiet_secondary_process(rank)
    # Each invocation's log folder is its own, even when two start in the same second.
    OmegaConf.register_new_resolver("pid", os.getpid, replace=True)

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> dict[str, Any] | JobFailure:
        # Read in the job's own process: a submitit job (hydra/launcher=slurm) is started by srun, not by
        # the command that sent the sweep, and only there does SLURM say which task this is.
        if _rank() > 0:  # process 0 tells the story; the others only warn
            logging.getLogger().setLevel(logging.WARNING)
        hydra_cfg = HydraConfig.get()
        job_dir = Path(hydra_cfg.runtime.output_dir)
        log_file = job_dir / f"{hydra_cfg.job.name}.log"
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
            check_run_config(config, {})  # every value, before torch is imported (names: by `run`)
            check_overrides(list(hydra_cfg.overrides.task))
            check_checkpoint(config)  # a checkpoint path that is a file or absent: still before torch
            from probe.run.main import run

            record = run(config, log_file=log_file)
        except BaseException as err:
            user = _is_user_error(err)
            if user and hydra_cfg.mode == RunMode.MULTIRUN:  # the sweep goes on; the summary lists this job
                log.error("ovprobe: %s", err)
                return JobFailure(str(err))
            _remove_if_empty(job_dir, keep=set(), empty_files={log_file.name})  # no empty run.log left
            if user:
                raise SystemExit(f"ovprobe: {err}") from err
            raise
        if record.get("log_file") != str(log_file):  # reused: no new log
            _remove_if_empty(job_dir, keep={log_file.name})
        return record

    app()
    if FAILED:
        raise SystemExit(1)
