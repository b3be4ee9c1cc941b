"""A new user's first day: stale answers, checkpoints named on the command line, a clone elsewhere."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import probe.run.main
import probe.store.features
from backbones import create_backbone
from backbones.weights import CheckpointError
from probe.run.main import ConfigError, _user_errors, compose_config, run
from tasks.progress import progress_bar, progress_mode
from tests.test_run import small, small_overrides

REFERENCE = "onevision_reference/ov_tiny_layernorm_head"


def test_new_weights_saved_over_old_ones_are_a_new_run(tmp_path: Path, fixtures: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(fixtures / REFERENCE, folder)
    overrides = (
        "backbone=onevision_large", f"backbone.args.checkpoint={folder}", "backbone.args.input_size=56"
    )
    first = run(small(tmp_path, *overrides))
    assert run(small(tmp_path, *overrides))["run_id"] == first["run_id"]  # same weights: reused

    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layers.0.mlp.fc1.weight"] = state["encoder.layers.0.mlp.fc1.weight"] * 1.5
    save_file(state, str(folder / "model.safetensors"))  # same folder, same command
    second = run(small(tmp_path, *overrides))
    assert second["identity"]["weights"] != first["identity"]["weights"]
    assert second["backbone"]["fingerprint"] == second["identity"]["weights"]
    assert second["run_id"] != first["run_id"]
    assert {p.name for p in (tmp_path / "results").iterdir() if not p.name.startswith(".")} >= {
        first["run_id"], second["run_id"]
    }


def test_other_clips_under_the_same_config_are_a_new_run(tmp_path: Path) -> None:
    """A list task whose annotation file was edited in place: same config, different data."""
    first = run(small(tmp_path, "task.args.num_train=32"))
    listing = Path(first["data"]["train_features"])  # the store names the data it came from
    assert listing.is_dir()
    root = Path(compose_config(small_overrides(tmp_path))["cache_dir"]) / "synthetic"
    (train_list,) = root.glob("*/train.txt")
    lines = train_list.read_text().splitlines()
    train_list.write_text("\n".join(lines[:-1]) + "\n")  # one clip fewer
    second = run(small(tmp_path, "task.args.num_train=32"))
    assert second["identity"]["train_clips"] != first["identity"]["train_clips"]
    assert second["run_id"] != first["run_id"] and second["data"]["train_clips"] == 31


@pytest.mark.parametrize("name", ["onevision_tiny", "onevision_large", "siglip2_tiny", "dinov3_tiny",
                                  "qwen3vit_tiny"])
def test_every_backbone_config_takes_a_checkpoint_without_plus(name: str) -> None:
    config = compose_config([f"backbone={name}", "backbone.args.checkpoint=/ckpt", "backbone.args.seed=3"])
    assert config["backbone"]["args"]["checkpoint"] == "/ckpt"


def test_all_backbone_configs_declare_the_family_arguments() -> None:
    conf = Path(__file__).resolve().parents[1] / "probe" / "conf" / "backbone"
    for path in sorted(conf.glob("*.yaml")):
        args = compose_config([f"backbone={path.stem}"])["backbone"]["args"]
        assert {"checkpoint", "random_init", "dtype", "seed", "input_size"} <= set(args), path.name


def test_a_weights_file_instead_of_its_folder_says_so(tmp_path: Path, fixtures: Path) -> None:
    weights = fixtures / REFERENCE / "model.safetensors"
    with pytest.raises(CheckpointError, match=r"is a file; pass the folder .*=.*ov_tiny_layernorm_head$"):
        create_backbone("onevision_large", checkpoint=str(weights))


def test_a_clone_elsewhere_runs_without_the_shared_fixtures(tmp_path: Path) -> None:
    """The embedded default needs nothing outside the package: copy the code alone and run it."""
    repo = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    for package in ("backbones", "tasks", "probe"):
        shutil.copytree(repo / package, clone / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(clone), "OVPROBE_FIXTURES": str(tmp_path / "no-fixtures"),
           "HF_HUB_OFFLINE": "1"}
    overrides = small_overrides(tmp_path)
    done = subprocess.run([sys.executable, "-m", "probe.run", *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "results").glob("synthetic-*/record.json"))


def _ovprobe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe.run", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_an_explicit_invocation_is_one_run_whose_record_names_its_log(tmp_path: Path) -> None:
    overrides = [o if o != "progress=false" else "progress=auto" for o in small_overrides(tmp_path)]
    done = _ovprobe(tmp_path, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    (record_file,) = (tmp_path / "results").glob("*/record.json")  # one sampler, not a sweep
    log_file = Path(json.loads(record_file.read_text())["log_file"])
    assert log_file.parent.parent == tmp_path / "results" / "logs"
    assert "\r" not in done.stderr and "features onevision_tiny synthetic/train" in done.stderr  # plain lines
    assert "run record written" in log_file.read_text()
    again = _ovprobe(tmp_path, *small_overrides(tmp_path))
    assert again.returncode == 0 and "reusing the finished run" in again.stdout + again.stderr
    assert [p.name for p in (tmp_path / "results" / "logs").iterdir()] == [log_file.parent.name]


def test_a_sweep_runs_every_valid_job_and_lists_the_failed_ones(tmp_path: Path) -> None:
    overrides = small_overrides(tmp_path, "sampling.budget=128,100,256")
    done = _ovprobe(tmp_path, "-m", *(o for o in overrides if o != "sampling.frames_equiv=4"))  # one or other
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 run(s) failed:\n  sampling.budget=100: sampling.budget=100 is not a whole number of frames" in (
        done.stdout
    )
    table = [line for line in done.stdout.splitlines() if line.startswith("| OneVision-Encoder tiny")]
    assert len(table) == 2, done.stdout
    assert len(list((tmp_path / "results").glob("*/record.json"))) == 2


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere(capsys) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_mode("auto", Terminal()) == "bar" and progress_mode(True, Terminal()) == "bar"
    assert progress_mode("auto", io.StringIO()) == "lines" and progress_mode(False) == "off"
    with pytest.raises(ValueError, match="progress='yes' is not one of: auto, bar, lines, off"):
        progress_mode("yes")
    with progress_bar("lines", total=1000, desc="work") as bar:
        for _ in range(1000):
            bar.update()
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 2 and "work: 100%" in err  # first and last, nothing between


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the run decodes a video or builds a backbone."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the config was checked")

    monkeypatch.setattr(probe.run.main, "create_backbone", forbidden)
    monkeypatch.setattr(probe.store.features, "extract_features", forbidden)
    monkeypatch.setattr(probe.run.main, "extract_features", forbidden)


@pytest.mark.parametrize("override, message", [
    ("sampling.budget=abc", "sampling.budget='abc': expected an integer >= 1 or null"),
    ("on_existing=foo", "on_existing='foo': expected one of: reuse, refuse, new"),
    ("device=gpu", "device='gpu': expected one of: auto, cpu, cuda, cuda:N, mps"),
    ("extract.dtype=fp16", "extract.dtype='fp16': expected one of: float16, bfloat16, int8, float32"),
    ("task.epochs=0", "task.epochs=0: expected an integer >= 1"),
    ("probe.recipe.view_space=mean", "probe.recipe.view_space='mean': expected one of: logit, prob"),
    ("task=list", "task.args.splits.train is required and has no value: set task.args.splits.train="),
    ("backbone.name=nope", "backbone.name='nope' is not one of: aimv2_"),
    ("task=diving48", "diving48"),  # no data root: named before any backbone is built
])
def test_bad_values_fail_before_any_work_naming_the_key(tmp_path, no_work, override, message) -> None:
    env_root = os.environ.pop("OVPROBE_DATA", None)
    try:
        with pytest.raises(_user_errors()) as err:
            run(small(tmp_path, override))
    finally:
        if env_root is not None:
            os.environ["OVPROBE_DATA"] = env_root
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_codec_budget_beyond_the_dense_run_is_refused_before_decoding(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(probe.run.main, "extract_features", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(ConfigError, match=r"budget=8192 is more than the 4096 patches of the dense run"):
        run(small(tmp_path, "sampling=codec", "sampling.budget=8192"))


def test_a_onevision_folder_without_config_is_one_line(tmp_path: Path, fixtures: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(fixtures / REFERENCE / "model.safetensors", folder)
    with pytest.raises(CheckpointError, match="config.json"):
        create_backbone("onevision_large", checkpoint=str(folder))
    done = _ovprobe(tmp_path, *small_overrides(tmp_path, "sampling.budget=abc"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "ovprobe: sampling.budget='abc': expected an integer >= 1 or null"
    )
