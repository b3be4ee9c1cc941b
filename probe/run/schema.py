"""What a run config may hold: one schema, checked before any work (no decoding, no backbone loading).

Each section is a dataclass whose fields name their type and, for choices, an Enum; names that live in a
registry (backbones, tasks, samplers) are checked against it. A bad value stops the run with one line
naming the key, the value and what is accepted. Keys the schema does not list are left to their users
(a family's `backbone.args`, a task's `task.args`); Hydra already refuses keys no config declares.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class ConfigError(ValueError):
    """A bad configuration, found before any work starts."""


class OnExisting(str, Enum):
    reuse = "reuse"
    refuse = "refuse"
    new = "new"


class Policy(str, Enum):
    skip = "skip"
    error = "error"


class StoreDtype(str, Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"
    int8 = "int8"
    float32 = "float32"


class ExtractMode(str, Enum):
    store = "store"
    stream = "stream"


class Progress(str, Enum):
    auto = "auto"
    bar = "bar"
    lines = "lines"
    off = "off"


class ViewSpace(str, Enum):
    logit = "logit"
    prob = "prob"


class GridTrainer(str, Enum):
    auto = "auto"
    stacked = "stacked"
    loop = "loop"


class TemporalPos(str, Enum):
    auto = "auto"
    none = "none"
    sinusoidal = "sinusoidal"
    learned = "learned"


class HeadNorm(str, Enum):
    layer = "layer"
    batch = "batch"


class HeadPositions(str, Enum):
    none = "none"
    rope = "rope"


class HeadKind(str, Enum):
    attentive = "attentive"
    original = "original"


class KvNorm(str, Enum):
    layer = "layer"
    none = "none"


class PoolNorm(str, Enum):
    layer = "layer"
    rms = "rms"


class Selection(str, Enum):
    val = "val"
    test_max = "test_max"


class ComputeDtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SparseMode(str, Enum):
    native = "native"
    full_frames_then_gather = "full_frames_then_gather"


class BrightnessMode(str, Enum):
    shift = "shift"
    multiplier = "multiplier"


class ProtocolName(str, Enum):
    honest = "honest"
    original = "original"


def _at_least(low: float, strict: bool = False) -> dict[str, Any]:
    return {"low": low, "strict": strict}


@dataclass
class Extract:
    mode: ExtractMode = ExtractMode.store
    train_views: int = field(default=2, metadata=_at_least(1))
    batch_size: int = field(default=8, metadata=_at_least(1))
    shard_size: int = field(default=64, metadata=_at_least(1))
    dtype: StoreDtype = StoreDtype.float16
    verify: bool = False


@dataclass
class Sampling:
    name: str = "uniform"
    budget: int | None = field(default=None, metadata=_at_least(1))
    frames_equiv: int = field(default=8, metadata=_at_least(1))
    num_clips: int = field(default=1, metadata=_at_least(1))
    num_crops: int = field(default=1, metadata=_at_least(1))


@dataclass
class Task:
    name: str = "synthetic"
    train_split: str = "train"
    eval_split: str = "test"
    epochs: int = field(default=10, metadata=_at_least(1))


@dataclass
class BackboneArgs:
    """The arguments every family shares (a family's own ones are checked by its constructor)."""

    checkpoint: str | None = None  # checked on disk by `probe.run.main.check_config`
    random_init: bool | None = None
    dtype: ComputeDtype = ComputeDtype.auto
    seed: int = 0
    input_size: int | None = field(default=None, metadata=_at_least(1))
    layers: list[int] | None = None
    frame_batch: int = field(default=64, metadata=_at_least(1))
    sparse_mode: SparseMode = SparseMode.native
    keep_prefix: bool | None = None
    reference: bool = False


@dataclass
class Backbone:
    name: str = "onevision_tiny"
    args: BackboneArgs = field(default_factory=BackboneArgs)


@dataclass
class Head:
    depth: int = field(default=0, metadata=_at_least(0))
    mlp_ratio: float = field(default=4.0, metadata=_at_least(0, strict=True))
    temporal_pos: TemporalPos = TemporalPos.auto
    norm: HeadNorm = HeadNorm.layer
    positions: HeadPositions = HeadPositions.none
    kind: HeadKind = HeadKind.attentive
    kv_norm: KvNorm = KvNorm.layer
    query_residual: bool = True
    pool_norm: PoolNorm = PoolNorm.layer
    query_init_std: float = field(default=0.02, metadata=_at_least(0, strict=True))


@dataclass
class Recipe:
    lrs: list[float] = field(default_factory=list, metadata=_at_least(0, strict=True))
    wds: list[float] = field(default_factory=list, metadata=_at_least(0))
    epochs: int = field(default=10, metadata=_at_least(1))
    batch_size: int = field(default=32, metadata=_at_least(1))
    final_lr: float = field(default=0.0, metadata=_at_least(0))
    grad_clip: float = field(default=5.0, metadata=_at_least(0))
    label_smoothing: float = field(default=0.1, metadata={**_at_least(0), "below": 1.0})
    val_fraction: float = field(default=0.1, metadata={**_at_least(0), "below": 1.0})  # 0: no validation
    view_space: ViewSpace = ViewSpace.logit
    bootstrap: int = field(default=1000, metadata=_at_least(0))
    grid: GridTrainer = GridTrainer.auto
    selection: Selection = Selection.val
    track_test: bool | None = None
    drop_last: bool = False
    coverage_ranks: int = field(default=0, metadata=_at_least(0))


@dataclass
class Probe:
    name: str = "attentive"
    head: Head = field(default_factory=Head)
    recipe: Recipe = field(default_factory=Recipe)
    from_run: str | None = None


@dataclass
class ColorJitter:
    enabled: bool = True
    brightness_mode: BrightnessMode = BrightnessMode.shift


@dataclass
class Augment:
    color_jitter: ColorJitter = field(default_factory=ColorJitter)


@dataclass
class Protocol:
    name: ProtocolName = ProtocolName.honest


@dataclass
class RunConfig:
    backbone: Backbone = field(default_factory=Backbone)
    task: Task = field(default_factory=Task)
    sampling: Sampling = field(default_factory=Sampling)
    probe: Probe = field(default_factory=Probe)
    extract: Extract = field(default_factory=Extract)
    augment: Augment = field(default_factory=Augment)
    protocol: Protocol = field(default_factory=Protocol)
    seed: int = 0
    device: str = field(
        default="auto",
        metadata={"pattern": r"auto|cpu|cuda|cuda:\d+|mps", "accepted": "auto, cpu, cuda, cuda:N, mps"},
    )
    results_dir: str = "results"
    cache_dir: str = "~/.cache/ovprobe"
    on_existing: OnExisting = OnExisting.reuse
    on_bad_clip: Policy = Policy.skip
    on_bad_record: Policy = Policy.error
    num_workers: int = field(default=2, metadata=_at_least(0))
    progress: Progress | bool = Progress.auto


def check_run_config(config: dict[str, Any], registries: dict[str, list[str]]) -> None:
    """Raise `ConfigError` for the first value that the schema (or a registry of names) refuses.

    `registries` maps a key (`backbone.name`) to its registered names.
    """
    _missing(config, "")
    _check_section(RunConfig, config, "")
    for key, names in registries.items():
        section, name = key.split(".")
        if config[section][name] not in names:
            raise ConfigError(f"{key}={config[section][name]!r} is not one of: {', '.join(names)}")


def _missing(node: Any, where: str) -> None:
    """Mandatory values (`???` in a config) left unset."""
    if isinstance(node, dict):
        for k, v in node.items():
            _missing(v, f"{where}{k}.")
    elif node == "???":
        raise ConfigError(f"{where[:-1]} is required and has no value: set {where[:-1]}=...")


def _check_section(schema: type, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in values:
            continue
        key = where + f.name
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(values[f.name], dict):
                raise ConfigError(f"{key} must be a group of keys, not {values[f.name]!r}")
            _check_section(kind, values[f.name], key + ".")
        else:
            _check_value(key, values[f.name], kind, f.metadata)


def _check_value(key: str, value: Any, kind: Any, rules: Any) -> None:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in options:
        return
    errors = []
    for option in (o for o in options if o is not type(None)):
        problem = _problem(value, option, rules)
        if problem is None:
            return
        errors.append(problem.removeprefix("expected "))
    if type(None) in options:
        errors.append("null")
    raise ConfigError(f"{key}={value!r}: expected {' or '.join(errors)}")


def _problem(value: Any, kind: Any, rules: Any) -> str | None:
    """Why `value` is not a `kind` within `rules`, or None."""
    if typing.get_origin(kind) is list:
        if not isinstance(value, list) or not value:
            return "expected a non-empty list, e.g. [1e-4]"
        for item in value:
            problem = _problem(item, typing.get_args(kind)[0], rules)
            if problem:
                return f"item {item!r}: {problem}"
        return None
    if isinstance(kind, type) and issubclass(kind, Enum):
        accepted = [m.value for m in kind]
        return None if value in accepted else f"expected one of: {', '.join(accepted)}"
    if kind is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if kind in (int, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not float(value).is_integer()):
            return f"expected {'an integer' if kind is int else 'a number'}{_range(rules)}"
        low, below = rules.get("low"), rules.get("below")
        too_low = low is not None and (value < low or (rules.get("strict") and value == low))
        if too_low or (below is not None and value >= below):
            return f"expected {'an integer' if kind is int else 'a number'}{_range(rules)}"
        return None
    if kind is str:
        if not isinstance(value, str):
            return "expected a string"
        pattern = rules.get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            return f"expected one of: {rules['accepted']}"
        return None
    raise TypeError(f"the schema has no rule for {kind!r}")


def _range(rules: Any) -> str:
    low, below = rules.get("low"), rules.get("below")
    if low is None:
        return ""
    text = f" {'>' if rules.get('strict') else '>='} {low:g}"
    return text + (f" and < {below:g}" if below is not None else "")


# Keys that say the same thing two ways: set together on one command line, neither would say which won.
CONFLICTS = (
    ("sampling.budget", "sampling.frames_equiv", "a budget in patches or one in frames: set one of them"),
)


def check_checkpoint(config: dict[str, Any]) -> None:
    """`backbone.args.checkpoint` names a folder on disk or a repo id in the Hugging Face cache: a file or
    a path that does not exist is refused here, before torch or any backbone is imported."""
    from backbones.checkpoints import CheckpointError, resolve_checkpoint_dir

    checkpoint = config["backbone"]["args"].get("checkpoint")
    if checkpoint is not None:
        try:
            resolve_checkpoint_dir(checkpoint)
        except CheckpointError as err:
            raise ConfigError(f"backbone.args.checkpoint: {err}") from err


def check_overrides(overrides: list[str]) -> None:
    """Raise `ConfigError` when the command line sets two keys that conflict (`CONFLICTS`), naming both."""
    given = {}
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and value not in ("null", ""):
            given[key] = value
    for first, second, why in CONFLICTS:
        if first in given and second in given:
            raise ConfigError(f"{first}={given[first]} and {second}={given[second]} conflict: {why}")
