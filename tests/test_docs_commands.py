"""Every command the README and the guides in `docs/` show still works as shown.

Commands are taken from fenced shell blocks (continuation lines joined, comments dropped) and from inline
backticked spans: `ovprobe` (also as `python -m probe.run`, under `torchrun -m probe.run` or `srun`),
`ovprobe-select`, `ovprobe-report` (also `python -m probe.report`) and the eval scripts. `ovprobe` overrides
compose through `probe.run.main.compose_config` and pass the schema check (`check_config`), every
combination of a sweep (`-m a,b`), or, for a large sweep, as many combinations as its longest list so
that every value is composed once; `ovprobe-select` and `ovprobe-report` parse their flags with their own
parsers and compose their overrides; eval scripts run with `DRY_RUN=1` and their first command composes.
`<name>` placeholders stand for a value and `$VAR` for a shell variable; a `...` placeholder fails unless
the exact command is listed in ILLUSTRATIVE (a syntax template, not a command). Relative links resolve.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

import backbones.checkpoints
import probe.report.main
import probe.run.select
from probe.run.cli import EMBEDDED_DEFAULT
from probe.run.main import check_config, compose_config
from tests.test_eval_scripts import script_env

REPO_ROOT = Path(__file__).resolve().parents[1]
# The README and the guides; docs/pending/ (notes waiting to be folded in) and docs/report/ are not guides.
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Shown on purpose with `...`: templates of the syntax, each in these words somewhere in the docs.
ILLUSTRATIVE = {"ovprobe KEY=VALUE ...", "ovprobe -m KEY=A,B ..."}
MAX_COMBINATIONS = 16  # a larger sweep is checked on one combination per value of its longest list
SHELL_FENCES = {"bash", "sh", "shell", "console"}
PROGRAMS = ("ovprobe", "ovprobe-select", "ovprobe-report")
ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Shown:
    """One command as a document shows it."""

    where: str  # file:line
    text: str
    env: tuple[tuple[str, str], ...]
    program: str  # ovprobe | ovprobe-select | ovprobe-report | shells_eval_ap/<script>.sh
    args: tuple[str, ...]


def parse_command(text: str, where: str, comments: bool = True) -> Shown | None:
    """`text` as a command of the suite, or None when it is another program (or no command at all)."""
    try:
        tokens = shlex.split(text, comments=comments)
    except ValueError as err:
        raise AssertionError(f"{where}: cannot split {text!r} as a shell line: {err}") from err
    env = []
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env.append((key, value))
    if not tokens:
        return None
    head, rest = tokens[0], tokens[1:]
    if head in PROGRAMS or re.match(r"shells_eval_ap/eval_.+\.sh$", head):
        program, args = head, rest
    elif head.startswith("python") and rest[:2] in (["-m", "probe.run"], ["-m", "probe.report"]):
        program, args = {"probe.run": "ovprobe", "probe.report": "ovprobe-report"}[rest[1]], rest[2:]
    elif head == "torchrun" and "probe.run" in rest and rest[rest.index("probe.run") - 1] == "-m":
        program, args = "ovprobe", rest[rest.index("probe.run") + 1:]
    elif head == "srun" and "ovprobe" in rest:
        program, args = "ovprobe", rest[rest.index("ovprobe") + 1:]
    else:
        return None
    return Shown(where, text.strip(), tuple(env), program, tuple(args))


def shown_commands(path: Path) -> list[Shown]:
    """Every suite command in one Markdown file, fenced and inline."""
    lines = path.read_text().splitlines()
    found: list[Shown] = []
    prose: list[str] = []  # the text outside fences, line for line, so that inline spans keep their line
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
            continue
        prose.append("")
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        pending += line.rstrip().removesuffix("\\")  # a shell joins continued lines as they are
        if not line.rstrip().endswith("\\"):
            if shown := parse_command(pending, f"{path.name}:{start}"):
                found.append(shown)
            pending = ""
    text = "\n".join(prose)
    for match in re.finditer(r"`([^`]+)`", text):
        span = " ".join(match[1].split())
        if shown := parse_command(span, f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}", False):
            found.append(shown)
    return found


SHOWN = [shown for doc in DOCS for shown in shown_commands(doc)]


def concrete(args: tuple[str, ...], where: str) -> list[str]:
    """The arguments with `<name>` placeholders and `$VAR`s given a value; `...` is refused."""
    out = []
    for arg in args:
        assert "..." not in arg, (
            f"{where}: {arg!r} is a placeholder; show the whole command, or list the line in ILLUSTRATIVE"
        )
        arg = re.sub(r"<([\w-]+)>", r"\1", arg)
        out.append(re.sub(r"\$\{?[A-Z_][A-Z0-9_]*\}?", "0", arg))
    return out


def combinations(overrides: list[str], multirun: bool, where: str) -> list[list[str]]:
    """The runs an `ovprobe` command line stands for: one, or a sweep's combinations."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            assert multirun, f"{where}: {override.input_line} is a sweep; it needs -m"
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    every = [list(c) for c in itertools.product(*choices)]
    if len(every) <= MAX_COMBINATIONS:
        return every
    longest = max(len(c) for c in choices)
    return [[c[i % len(c)] for c in choices] for i in range(longest)]


def compose_and_check(overrides: list[str]) -> dict[str, Any]:
    config = compose_config(overrides)
    check_config(config)
    return config


def check_ovprobe(shown: Shown) -> int:
    args = concrete(shown.args, shown.where) if shown.args else list(EMBEDDED_DEFAULT)
    multirun = any(a in ("-m", "--multirun") for a in args)
    flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    assert not flags, f"{shown.where}: ovprobe takes overrides and -m, not {flags}"
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    runs = combinations(overrides, multirun, shown.where)
    parser = OverridesParser.create()
    for run in runs:
        config = compose_and_check(run)
        for override in parser.parse_overrides(run):  # the shown value is the one that runs
            if "/" in override.key_or_group or override.key_or_group.startswith("hydra."):
                continue  # Hydra's own config (hydra/launcher=..., hydra.launcher.*), not in the run config
            node: Any = config
            for part in override.key_or_group.split("."):
                node = node[part]
            node = node["name"] if isinstance(node, dict) else node
            assert node == override.value(), f"{shown.where}: {override.input_line} composed to {node!r}"
    return len(runs)


def check_select(shown: Shown, monkeypatch) -> int:
    composed: list[dict[str, Any]] = []

    def precompute(config: dict[str, Any], shard: tuple[int, int]) -> Any:
        check_config(config)
        composed.append(config)
        return SimpleNamespace(line=lambda: "checked", unreadable={})

    monkeypatch.setattr(probe.run.select, "precompute", precompute)
    with pytest.raises(SystemExit) as stop:
        probe.run.select.main(concrete(shown.args, shown.where))
    assert stop.value.code == 0, f"{shown.where}: ovprobe-select stopped: {stop.value.code}"
    assert len(composed) == 1
    return 1


def check_report(shown: Shown, monkeypatch) -> int:
    calls = []
    monkeypatch.setattr(probe.report.main, "write_report", lambda *args, **kwargs: calls.append(args) or "")
    probe.report.main.main(concrete(shown.args, shown.where))  # a bad flag: argparse exits with status 2
    assert len(calls) == 1
    return 1


def check_script(shown: Shown) -> int:
    script = REPO_ROOT / shown.program
    assert script.is_file(), f"{shown.where}: {shown.program} does not exist"
    # PLAN=1 runs `ovprobe-plan` over the same runs (tests/test_plan.py); here the runs themselves compose.
    env = script_env(**{**dict(shown.env), "DRY_RUN": "1", "PLAN": "0"})
    args = concrete(shown.args, shown.where)
    done = subprocess.run([str(script), *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, f"{shown.where}: {shown.text}: {done.stderr[-2000:]}"
    commands = [shlex.split(line) for line in done.stdout.splitlines()]
    assert commands, f"{shown.where}: {shown.text} printed no command"
    first = commands[0]
    overrides = first[first.index("probe.run") + 1:] if first[0] == "torchrun" else first[1:]
    compose_and_check(overrides)
    return 1


@pytest.fixture(autouse=True)
def shown_checkpoints_exist(monkeypatch) -> None:
    """A checkpoint folder in the docs (`/ckpt/...`) is the reader's: whether it is on this disk is not the
    docs' to prove (`check_config` refuses a missing one, `tests/test_mistakes.py`)."""
    monkeypatch.setattr(backbones.checkpoints, "resolve_checkpoint_dir", Path)


@pytest.mark.parametrize("shown", SHOWN, ids=lambda s: f"{s.where}:{s.program.rsplit('/', 1)[-1]}")
def test_shown_command_composes(shown: Shown, monkeypatch) -> None:
    if shown.text in ILLUSTRATIVE:
        return
    if shown.program == "ovprobe":
        assert check_ovprobe(shown) >= 1
    elif shown.program == "ovprobe-select":
        assert check_select(shown, monkeypatch) == 1
    elif shown.program == "ovprobe-report":
        assert check_report(shown, monkeypatch) == 1
    else:
        assert check_script(shown) == 1


def test_the_docs_show_every_kind_of_command() -> None:
    programs = {shown.program.split("/")[0] for shown in SHOWN}
    assert programs == {"ovprobe", "ovprobe-select", "ovprobe-report", "shells_eval_ap"}, programs
    assert {s.where.split(":")[0] for s in SHOWN} >= {"README.md", "datasets.md", "sampling.md", "scale.md"}
    shown_texts = {shown.text for shown in SHOWN}
    assert ILLUSTRATIVE <= shown_texts, f"not shown any more: {ILLUSTRATIVE - shown_texts}"


def test_the_readme_stays_a_landing_page() -> None:
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 160, f"README.md: {len(lines)} lines; move details to a guide in docs/ and link it"
    linked = set(re.findall(r"\]\(docs/(\w+\.md)\)", "\n".join(lines)))
    guides = {doc.name for doc in DOCS[1:]}
    assert linked == guides, f"guides not linked from the README: {guides - linked}"


def test_a_wrong_command_in_a_doc_is_caught(tmp_path: Path, monkeypatch) -> None:
    """What a stale doc would show fails: a renamed value, a sweep without -m, a placeholder, a bad flag."""
    doc = tmp_path / "guide.md"
    doc.write_text(
        "Run `ovprobe sampling=codex`, or:\n\n```bash\nDATA_ROOT=/d ovprobe task=diving48 \\\n"
        "    sampling.budget=512,1024   # a sweep without -m\n"
        "torchrun --nproc_per_node=2 -m probe.run backbone=...same...\nls -l\n```\n\n"
        "and `ovprobe-report --colour red`.\n"
    )
    typo, no_multirun, placeholder, report = sorted(shown_commands(doc), key=lambda s: int(s.where[9:]))
    assert [s.where for s in (typo, no_multirun, placeholder, report)] == [
        "guide.md:1", "guide.md:4", "guide.md:6", "guide.md:10"
    ]
    assert no_multirun.env == (("DATA_ROOT", "/d"),)
    assert no_multirun.args == ("task=diving48", "sampling.budget=512,1024")
    with pytest.raises(Exception, match="codex"):
        check_ovprobe(typo)
    with pytest.raises(AssertionError, match="needs -m"):
        check_ovprobe(no_multirun)
    with pytest.raises(AssertionError, match="placeholder"):
        check_ovprobe(placeholder)
    with pytest.raises(SystemExit):
        check_report(report, monkeypatch)


def test_a_large_sweep_composes_every_value_once() -> None:
    runs = combinations(["backbone=a,b,c,d,e", "task=x,y,z,w", "seed=1"], True, "here")
    assert len(runs) == 5  # 20 combinations > MAX_COMBINATIONS: one per backbone, every task among them
    assert {r[0] for r in runs} == {f"backbone={b}" for b in "abcde"}
    assert {r[1] for r in runs} == {f"task={t}" for t in "xyzw"} and all(r[2] == "seed=1" for r in runs)
    assert len(combinations(["sampling=uniform,codec,random", "sampling.budget=512,1024"], True, "here")) == 6


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.name}: link to {target}: {path} does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
            anchors = {_anchor(h) for h in headings}
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor} in {path.name}"
