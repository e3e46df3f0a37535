"""The numbers: accuracy per arm, paired differences between SGAN arms and baseline arms, contrasts
between SGAN arms (variant, generator loss, precision), a ranking.

Pure functions of the runs table (one row per run that counts, see `runs.latest_per_identity`).
`metric` names the column compared: `final` (the raw classifier) or `ema` (its moving average).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.config import arm_name, is_baseline_arm
from pipeline.report.runs import GROUP

CONFIDENCE = 0.95
PAIRED_COLUMNS = [*GROUP, "labels", "sgan_arm", "baseline_arm", "n_pairs", "mean_diff", "ci_low", "ci_high"]
PAIRED_COLUMNS += ["p_value", "wins", "losses", "ties"]
CONTRAST_COLUMNS = [*GROUP, "labels", "arm", "reference_arm", "n_pairs", "mean_diff", "ci_low", "ci_high"]
CONTRAST_COLUMNS += ["p_value", "wins", "losses", "ties"]


def summarize(runs: pd.DataFrame, metric: str = "final") -> pd.DataFrame:
    """Accuracy per (data, protocol, labels, arm): n, mean, sample std, min, max."""
    columns = [*GROUP, "labels", "arm", "n", "mean", "std", "min", "max"]
    runs = runs.dropna(subset=[metric]) if not runs.empty else runs
    if runs.empty:
        return pd.DataFrame(columns=columns)
    grouped = runs.groupby([*GROUP, "labels", "arm"])[metric]
    table = grouped.agg(n="count", mean="mean", std="std", min="min", max="max").reset_index()
    return table.sort_values([*GROUP, "labels", "arm"]).reset_index(drop=True)[columns]


def early_stopping_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """`summarize` of every run at its best validation epoch (`val_selected`), with the mean epoch chosen."""
    table = summarize(runs, "val_selected")
    epochs = runs.dropna(subset=["val_selected"]).groupby([*GROUP, "labels", "arm"])["val_selected_epoch"]
    return table.merge(epochs.mean().rename("mean_epoch").reset_index(), on=[*GROUP, "labels", "arm"])


def paired_differences(runs: pd.DataFrame, metric: str = "final", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Every SGAN arm minus every baseline arm present, per data, protocol, architecture and label count
    (methods are compared on the same networks only), over the
    seeds both have (same seed = same labeled images): mean, the paired t interval and p-value
    (`scipy.stats.ttest_rel`), wins/losses/ties. Two arms are never pooled; with fewer than two pairs
    there is no interval."""

    return _pair_arms(runs, metric, confidence, _sgan_and_baselines, PAIRED_COLUMNS)


def _sgan_and_baselines(key: tuple, arms: list[str]) -> list[tuple[str, str]]:
    baselines = [arm for arm in arms if is_baseline_arm(arm)]
    return [(sgan, baseline) for sgan in arms if sgan.startswith("sgan") for baseline in baselines]


def seed_differences(runs: pd.DataFrame, metric: str = "final") -> pd.DataFrame:
    """The pairs behind `paired_differences`, one row per seed: SGAN arm minus baseline arm (`diff`)."""
    rows = [
        (*key, first, second, seed, diff)
        for key, first, second, a, b in _aligned(runs, metric, _sgan_and_baselines)
        for seed, diff in (a - b).items()
    ]
    return pd.DataFrame(rows, columns=[*GROUP, "labels", "sgan_arm", "baseline_arm", "seed", "diff"])


def sgan_contrasts(runs: pd.DataFrame, metric: str = "final", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Every other SGAN arm minus the reference SGAN arm (stacked, non-saturating, float32) of the same
    data, protocol, architecture and label count, paired by seed: what a variant, the generator loss or
    the precision changes, measured as the baselines are."""

    def pairs(key: tuple, arms: list[str]) -> list[tuple[str, str]]:
        reference = arm_name("sgan", "stacked", architecture=key[GROUP.index("architecture")])
        others = [arm for arm in arms if arm.startswith("sgan") and arm != reference]
        return [(arm, reference) for arm in others] if reference in arms else []

    return _pair_arms(runs, metric, confidence, pairs, CONTRAST_COLUMNS)


def _pair_arms(runs: pd.DataFrame, metric: str, confidence: float, pairs, columns: list[str]) -> pd.DataFrame:
    """Per data, protocol, architecture and label count, arm A minus arm B over the seeds both have, for
    each (A, B) that `pairs(key, sorted arms present)` names."""
    rows = [
        (*key, first, second, *_paired(a.to_numpy(), b.to_numpy(), confidence))
        for key, first, second, a, b in _aligned(runs, metric, pairs)
    ]
    return pd.DataFrame(rows, columns=columns)


def _aligned(runs: pd.DataFrame, metric: str, pairs) -> Iterator[tuple[tuple, str, str, pd.Series, pd.Series]]:
    """(group key, arm A, arm B, A's and B's `metric` on the seeds both have, indexed by seed)."""
    runs = runs.dropna(subset=[metric]) if not runs.empty else runs
    for key, group in runs.groupby([*GROUP, "labels"]) if not runs.empty else []:
        by_arm = {arm: rows_.set_index("seed")[metric] for arm, rows_ in group.groupby("arm")}
        for first, second in pairs(key, sorted(by_arm)):
            yield (key, first, second, *by_arm[first].align(by_arm[second], join="inner"))


def _paired(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple:
    d = a - b
    n = len(d)
    low = high = p_value = np.nan
    if n >= 2 and np.ptp(d) > 0:
        test = stats.ttest_rel(a, b)
        low, high = test.confidence_interval(confidence)
        p_value = test.pvalue
    elif n >= 2:  # every pair differs by the same amount: no spread to estimate
        low = high = d[0]
    mean = d.mean() if n else np.nan
    return n, mean, low, high, p_value, int((d > 0).sum()), int((d < 0).sum()), int((d == 0).sum())


def rank_arms(summary: pd.DataFrame) -> pd.DataFrame:
    """Per data, protocol, architecture and label count, the arms from best to worst mean accuracy."""
    if summary.empty:
        return pd.DataFrame(columns=[*GROUP, "labels", "rank", "arm", "n", "mean", "std"])
    ranked = summary.sort_values([*GROUP, "labels", "mean"], ascending=[True] * (len(GROUP) + 1) + [False])
    ranked = ranked.assign(rank=ranked.groupby([*GROUP, "labels"]).cumcount() + 1)
    return ranked[[*GROUP, "labels", "rank", "arm", "n", "mean", "std"]].reset_index(drop=True)


def ema_effect(runs: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per arm and label count, the moving-average classifier minus the raw one over the same runs:
    the evidence for the EMA decay (and for which figure to report)."""
    columns = [*GROUP, "labels", "arm", "n", "mean_diff", "ci_low", "ci_high", "p_value", "wins", "losses", "ties"]
    both = runs.dropna(subset=["final", "ema"]) if not runs.empty else runs
    rows = [
        (*key, *_paired(group["ema"].to_numpy(), group["final"].to_numpy(), confidence))
        for key, group in (both.groupby([*GROUP, "labels", "arm"]) if not both.empty else [])
    ]
    return pd.DataFrame(rows, columns=columns)
