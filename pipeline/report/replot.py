"""Redraw a written report's figures that depend on its tables alone (accuracy vs labels, paired differences)
from its `runs.csv`, and render its `report.html` again from its `report.md`: how a committed report takes a
change of those figures when the store its runs were in is not at hand. The learning curves, losses and
generated images need the runs' histories and are left as they are.

`python -m pipeline.report.replot reports/<name> [--metric final|ema|val_selected]`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pipeline.report import plots
from pipeline.report.document import markdown_to_html
from pipeline.report.runs import METRICS
from pipeline.report.statistics import paired_differences, seed_differences, summarize


def replot(folder: Path, metric: str = "final") -> list[Path]:
    runs = pd.read_csv(folder / "runs.csv")
    written = []
    if (folder / "accuracy_vs_labels.png").exists():
        plots.accuracy_vs_labels(
            summarize(runs, metric), runs, metric, folder / "accuracy_vs_labels.png", METRICS[metric][0]
        )
        written.append(folder / "accuracy_vs_labels.png")
    if (folder / "paired_difference.png").exists():
        paired = paired_differences(runs, metric)
        plots.paired_difference(paired, seed_differences(runs, metric), folder / "paired_difference.png")
        written.append(folder / "paired_difference.png")
    markdown = (folder / "report.md").read_text()
    title = markdown.splitlines()[0].removeprefix("# ")
    (folder / "report.html").write_text(markdown_to_html(markdown, title, folder))
    return [*written, folder / "report.html"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report.replot", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--metric", default="final", choices=list(METRICS))
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not (folder / "runs.csv").exists():
            print(f"error: {folder}: no runs.csv, not a written report", file=sys.stderr)
            return 2
    for folder in args.folders:
        for path in replot(folder, args.metric):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
