"""A training checkpoint in a folder: every variable training changes (`Trainer.state_variables`) as
`state.npz`, and where `fit` was (epoch, metric history, the best-validation weights) as `state.npz`'s
arrays plus `state.json`. Restoring both continues the run exactly: same batches, same dropout masks,
same optimizer moments. No MLflow here: `runs` moves the folder to and from the run's artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.training import FitState, History, Trainer
from pipeline.schema import CHECKPOINT_STATE

ARRAYS, META = "state.npz", CHECKPOINT_STATE


def save(folder: Path, trainer: Trainer, state: FitState, fingerprint: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(v.numpy()) for name, v in trainer.state_variables().items()}
    for track, (_, _, weights) in state.best.items():
        arrays |= {f"best{track}/{i}": w for i, w in enumerate(weights)}
    np.savez(folder / ARRAYS, **arrays)
    history = state.history
    meta = {
        "fingerprint": fingerprint,
        "epoch": state.epoch,
        "metrics": history.metrics,
        "seconds": history.seconds,
        "steps": history.steps,
        "best": {track: [score, epoch, len(weights)] for track, (score, epoch, weights) in state.best.items()},
    }
    (folder / META).write_text(json.dumps(meta))


def load(folder: Path, trainer: Trainer) -> FitState:
    """Put the saved variables back into `trainer` and return where `fit` was."""
    meta = json.loads((folder / META).read_text())
    with np.load(folder / ARRAYS) as arrays:
        variables = trainer.state_variables()
        missing = set(variables) - set(arrays.files)
        if missing:
            raise ValueError(f"checkpoint in {folder} lacks {len(missing)} variables, e.g. {sorted(missing)[:3]}")
        for name, variable in variables.items():
            variable.assign(arrays[name])
        best = {
            track: (score, epoch, [arrays[f"best{track}/{i}"] for i in range(count)])
            for track, (score, epoch, count) in meta["best"].items()
        }
    history = History(metrics=meta["metrics"], seconds=meta["seconds"], steps=meta["steps"])
    return FitState(epoch=meta["epoch"], history=history, best=best)
