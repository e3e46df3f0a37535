"""What a reader must know about coverage before trusting a table: missing arms, single pairs,
superseded reruns, several data/protocol groups, runs without a figure for the chosen metric."""

from __future__ import annotations

import pandas as pd

from pipeline.config import is_baseline_arm
from pipeline.report.runs import GROUP, METRICS


def coverage_notes(runs: pd.DataFrame, superseded: pd.DataFrame, paired: pd.DataFrame, metric: str) -> list[str]:
    if runs.empty:
        return ["No finished SGAN or baseline runs were found, so there is nothing to compare yet."]
    notes = []
    groups = runs[GROUP].drop_duplicates()
    if len(groups) > 1:
        described = "; ".join(f"{d}, {p}, {a} networks" for d, p, a in groups.itertuples(index=False))
        notes.append(
            f"The runs cover {len(groups)} data, protocol and architecture combinations ({described}): each is "
            "compared on its own, never pooled."
        )
    for (dataset, protocol, architecture, labels), group in runs.groupby([*GROUP, "labels"]):
        arms = sorted(set(group.arm))
        has_sgan = any(a.startswith("sgan") for a in arms)
        has_baseline = any(is_baseline_arm(a) for a in arms)
        if not (has_sgan and has_baseline):
            notes.append(
                f"At {labels} labels ({dataset}, {protocol}, {architecture} networks) only {', '.join(arms)} "
                "finished: no paired comparison there."
            )
    for row in paired[paired.n_pairs == 1].itertuples():
        notes.append(
            f"At {row.labels} labels, {row.sgan_arm} vs {row.baseline_arm} has one seed pair: no "
            "confidence interval can be given."
        )
    missing = runs[metric].isna().sum()
    if missing:
        notes.append(f"{missing} runs have no `{METRICS[metric][0]}` (logged before it existed) and are left out.")
    if not superseded.empty:
        notes.append(
            f"{len(superseded)} runs repeated an arm, data, protocol, label count and seed already present; the "
            "latest finished run counts (a rerun is made to replace a run). Superseded: "
            + ", ".join(superseded.run_id)
            + "."
        )
    return notes
