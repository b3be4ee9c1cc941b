"""The per-backbone eval scripts: shellcheck-clean, and each resolves to the `ovprobe` runs it promises."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from probe.run.main import compose_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "shells_eval_ap"
SCRIPTS = sorted(SCRIPTS_DIR.glob("eval_*.sh"))
CONF_DIR = REPO_ROOT / "probe" / "conf"
# script name prefix -> registered backbone name
BACKBONES = {
    "eval_ov_encoder_large": "onevision_large",
    "eval_siglip2_large_patch16_256": "siglip2_large16_256",
    "eval_dinov3_large": "dinov3_large",
    "eval_qwen3vit": "qwen3vit_8b",
    "eval_clip_base": "clip_base16",
    "eval_clip_large": "clip_large14",
    "eval_metaclip_large": "metaclip_large14",
    "eval_metaclip2_large": "metaclip2_large14",
    "eval_siglip_large_patch16_256": "siglip_large16_256",
    "eval_dinov2_large": "dinov2_large",
    "eval_dinov2reg_large": "dinov2reg_large",
    "eval_aimv2_large_patch14_224": "aimv2_large14_native",
    "eval_vjepa2_large": "vjepa2_large",
    "eval_pe_core_large_patch14_336": "timm_pe_core_large14_336",
}
# The default DATASETS, the original suite's eight, with each task config's epochs.
EPOCHS = {"ssv2": 10, "diving48": 30, "perception_test": 10, "epic_verb": 10, "epic_noun": 10, "hmdb51": 30,
          "kinetics400": 10, "charades_ego": 10}


def script_env(**env: str) -> dict[str, str]:
    """This environment without the variables the scripts read, plus `env`."""
    unset = ("DATASETS", "DATA_ROOT", "CKPT_DIR", "NPROC", "NNODES", "RDZV_ENDPOINT", "BATCH_SIZE", "DRY_RUN")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, **env}


def dry_run(script, *args: str, **env: str) -> list[list[str]]:
    """The commands the script would run, one argument list per dataset."""
    out = subprocess.run(
        [str(script), *args], env=script_env(DRY_RUN="1", **env), capture_output=True, text=True, check=True
    ).stdout
    return [shlex.split(line) for line in out.splitlines()]


def expected_setting(name: str) -> dict:
    """What the file name promises: `<N>frames` (uniform) or `<N>kpatches_<sampler>` (codec, random,
    pixel_diff: N x 1024 patches)."""
    if match := re.search(r"_(\d+)frames\.sh$", name):
        return {"name": "uniform", "frames_equiv": int(match[1]), "budget": None}
    match = re.search(r"_(\d+)kpatches_(codec|random|pixel_diff)\.sh$", name)
    assert match, f"{name}: name it ..._<N>frames.sh or ..._<N>kpatches_<codec|random|pixel_diff>.sh"
    return {"name": match[2], "budget": int(match[1]) * 1024}


def test_the_scripts_users_know_are_there():
    names = {s.name for s in SCRIPTS}
    assert {
        "eval_ov_encoder_large_8frames.sh",
        "eval_ov_encoder_large_16frames.sh",
        "eval_ov_encoder_large_2kpatches_codec.sh",
        "eval_ov_encoder_large_4kpatches_codec.sh",
        "eval_ov_encoder_large_2kpatches_random.sh",
        "eval_ov_encoder_large_2kpatches_pixel_diff.sh",
        "eval_siglip2_large_patch16_256_8frames.sh",
        "eval_dinov3_large_8frames.sh",
        "eval_qwen3vit_8frames.sh",
        "eval_clip_large_8frames.sh",
        "eval_metaclip2_large_8frames.sh",
        "eval_siglip_large_patch16_256_8frames.sh",
        "eval_dinov2_large_8frames.sh",
    } <= names
    settings = ("8frames", "16frames", "2kpatches_codec", "4kpatches_codec")
    for prefix in BACKBONES:  # every backbone has the four settings
        assert {f"{prefix}_{s}.sh" for s in settings} <= names
    assert all(os.access(s, os.X_OK) for s in SCRIPTS)


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); the dry runs still ran")
    result = subprocess.run(
        ["shellcheck", "-x", *map(str, SCRIPTS), str(SCRIPTS_DIR / "common.sh")],
        capture_output=True, text=True, cwd=SCRIPTS_DIR,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_dry_run_resolves_one_run_per_dataset(script, tmp_path):
    backbone = next(b for prefix, b in BACKBONES.items() if script.name.startswith(prefix + "_"))
    setting = expected_setting(script.name)
    commands = dry_run(script, "probe.recipe.bootstrap=7", DATA_ROOT="/data/videos", CKPT_DIR="/ckpt dir")
    assert [c[0] for c in commands] == ["ovprobe"] * len(EPOCHS)
    missing = not (CONF_DIR / "backbone" / f"{backbone}.yaml").exists()
    # Every command is checked; one dataset's is composed, in turn over the scripts, so that every task
    # config is composed with several backbones and settings (composing all would take minutes).
    composed = list(EPOCHS)[SCRIPTS.index(script) % len(EPOCHS)]
    for command, task in zip(commands, EPOCHS, strict=True):
        overrides = command[1:]
        assert f"backbone={backbone}" in overrides and f"task={task}" in overrides
        assert f"++task.args.root=/data/videos/{task}" in overrides
        assert "backbone.args.checkpoint=/ckpt dir" in overrides
        assert overrides[-1] == "probe.recipe.bootstrap=7"
        if missing or task != composed:
            continue
        config = compose_config([*overrides, f"results_dir={tmp_path}"])
        assert config["backbone"]["name"] == backbone
        assert config["backbone"]["args"]["checkpoint"] == "/ckpt dir"
        assert config["task"]["name"] == task and config["task"]["args"]["root"] == f"/data/videos/{task}"
        assert config["probe"]["recipe"]["epochs"] == EPOCHS[task]
        assert config["probe"]["recipe"]["bootstrap"] == 7
        assert {k: config["sampling"][k] for k in setting} == setting
    if missing:
        pytest.skip(f"command checked; probe/conf/backbone/{backbone}.yaml (and the backbone) is missing")


def test_the_checkpoint_may_come_first_as_in_the_original_suite():
    script = SCRIPTS_DIR / "eval_ov_encoder_large_8frames.sh"
    (command,) = dry_run(script, "/ckpt/ov-large", "seed=3", DATASETS="diving48", CKPT_DIR="/elsewhere")
    assert command[-2:] == ["backbone.args.checkpoint=/ckpt/ov-large", "seed=3"]
    (command,) = dry_run(script, "seed=3", DATASETS="diving48")
    assert not any("checkpoint" in arg for arg in command)


def test_datasets_and_nproc_pick_the_runs_and_the_launcher():
    script = SCRIPTS_DIR / "eval_ov_encoder_large_2kpatches_codec.sh"
    commands = dry_run(script, DATASETS="ssv2 kinetics400", NPROC="4")
    assert commands == [
        ["torchrun", "--nproc_per_node=4", "-m", "probe.run", "backbone=onevision_large", f"task={task}",
         "sampling=codec", "sampling.budget=2048"]
        for task in ("ssv2", "kinetics400")
    ]
    assert dry_run(script, DATASETS="diving48", NPROC="1")[0][0] == "ovprobe"


def test_without_dry_run_the_script_runs_ovprobe(tmp_path):
    """The real path: a stand-in `ovprobe` on PATH receives exactly the dry run's arguments."""
    (tmp_path / "ovprobe").write_text('#!/bin/sh\nprintf "%s|" "$@" >> "$LOG"\necho >> "$LOG"\n')
    (tmp_path / "ovprobe").chmod(0o755)
    script = SCRIPTS_DIR / "eval_dinov3_large_8frames.sh"
    path = f"{tmp_path}:{os.environ['PATH']}"
    env = script_env(PATH=path, LOG=str(tmp_path / "log"), DATASETS="diving48 ssv2")
    subprocess.run([str(script), "seed=3"], env=env, check=True)
    logged = [line.rstrip("|").split("|") for line in (tmp_path / "log").read_text().splitlines()]
    assert logged == [c[1:] for c in dry_run(script, "seed=3", DATASETS="diving48 ssv2")]
