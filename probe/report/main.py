"""`ovprobe-report` / `python -m probe.report`: tables and figures from run records, in one command.

    python -m probe.report results/ other_results/ --out results/report --where task=diving48

Writes to `--out`: `runs.csv` (every run), per paper table `<name>.md/.csv/.tex`, `report.md` (all of
it, as printed), `repeated_runs.csv` when runs share a configuration, the figures (PDF and PNG), and
with `--codec-clip VIDEO` the codec sampler's picture of that clip.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from probe.report import figures
from probe.report.results import (
    METRICS,
    apply_filters,
    coverage_frame,
    frame_to_markdown,
    name_rows,
    paper_tables,
    repeated_runs,
    runs_frame,
    to_csv,
    to_latex,
    to_markdown,
)


def write_report(folders: list[Path], out: Path, where: list[str], metric: str = "top1",
                 codec_clips: list[Path] = (), codec_budget: int = 2048, draw: bool = True) -> str:
    """Everything the command writes; returns the Markdown it prints."""
    runs = name_rows(apply_filters(runs_frame(folders), where))  # rows named by what differs among those kept
    if runs.empty:
        raise SystemExit(f"ovprobe-report: no runs left after --where {' '.join(where)}")
    out.mkdir(parents=True, exist_ok=True)
    runs.drop(columns="spec").to_csv(out / "runs.csv", index=False)
    sections = [f"# {len(runs)} runs from {', '.join(map(str, folders))}"]
    for name, table in paper_tables(runs, metric).items():
        markdown = to_markdown(table)
        (out / f"{name}.md").write_text(markdown + "\n")
        (out / f"{name}.csv").write_text(to_csv(table))
        (out / f"{name}.tex").write_text(to_latex(table))
        sections.append(markdown)
    repeated = repeated_runs(runs)
    if not repeated.empty:
        repeated.to_csv(out / "repeated_runs.csv", index=False)
        conflicts = repeated["config_hash"][repeated["status"] == "conflict"].nunique()
        sections.append(
            f"**Runs sharing a configuration** ({conflicts} conflicting; cells above average them, "
            f"marked n=...)\n\n{frame_to_markdown(repeated.drop(columns='path'))}"
        )
    coverage = coverage_frame(runs)
    if not coverage.empty:
        sections.append("**Test coverage under protocol=original** (the original's loader reads a permuted "
                        f"part of the test clips per epoch)\n\n{frame_to_markdown(coverage)}")
    sections.append(f"chance: {', '.join(f'{c:.1f}' for c in sorted(runs['chance'].unique()))}%")
    report = "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(report)
    if draw:
        figures.report_figures(runs, out, metric)
        for clip in codec_clips:
            from tasks.sampling.show import show

            show(clip, out / f"codec_{clip.stem}.png", budget=codec_budget)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ovprobe-report", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path,
                        help="folders holding <run-id>/record.json (default: $OVPROBE_RESULTS or results)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: FIRST_FOLDER/report)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE[,VALUE]",
                        help="keep matching runs (also COLUMN!=VALUE); repeatable; columns as in runs.csv")
    parser.add_argument("--metric", default="top1", choices=sorted(METRICS), help="the number in the tables")
    parser.add_argument("--codec-clip", action="append", default=[], type=Path, metavar="VIDEO",
                        help="also draw the codec sampler's frames, saliency and kept patches for VIDEO")
    parser.add_argument("--codec-budget", type=int, default=2048, help="patches kept in the codec picture")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    folders = args.folders or [Path(os.environ.get("OVPROBE_RESULTS", "results"))]
    out = args.out or folders[0] / "report"
    try:
        report = write_report(folders, out, args.where, args.metric, args.codec_clip, args.codec_budget,
                              draw=not args.no_figures)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"ovprobe-report: {err}") from err
    print(report + f"\nwritten to {out}/")


if __name__ == "__main__":
    main()
