"""What a running trial tells its sweep, as JSON lines appended to the file the sweep names for it
(`SGAN_TRIAL_EVENTS`): an event after every epoch and after every candidate of a recipe search. The trial
writes them with `emit` (nothing happens outside a sweep); the sweep's executors read them with `EventReader`
wherever the trial runs, and `Progress` turns them into console lines and ETAs. Plain data, no MLflow and no
TensorFlow, so that both sides import it cheaply."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.environment import EVENTS, value


@dataclass(frozen=True)
class EpochDone:
    """A trial finished epoch `epoch` of `epochs`, `seconds` into its training (a resumed run's earlier
    processes included)."""

    epoch: int
    epochs: int
    seconds: float
    figures: dict[str, float] = field(default_factory=dict)  # the accuracies `fit` shows

    def describe(self) -> str:
        return " ".join(f"{name} {figure:.4f}" for name, figure in self.figures.items())


@dataclass(frozen=True)
class CandidateDone:
    """A trial's recipe search finished candidate `done` of `total` (or reused one a stopped search finished);
    `seconds`, how long it trained, is about what a trial of its recipe takes (None: not recorded)."""

    done: int
    total: int
    recipe: dict[str, object]
    score: float  # best validation accuracy
    best_epoch: int
    seconds: float | None = None
    reused: bool = False

    def describe(self) -> str:
        chosen = ", ".join(f"{k}={v}" for k, v in self.recipe.items())
        took = ", reused from the stopped search" if self.reused else ""
        took += f", {self.seconds:.0f} s" if self.seconds is not None else ""
        return f"{chosen}: best validation accuracy {self.score:.4f} at epoch {self.best_epoch}{took}"


Event = EpochDone | CandidateDone
KINDS: dict[str, type] = {"epoch": EpochDone, "candidate": CandidateDone}


def encode(event: Event) -> str:
    kind = next(name for name, cls in KINDS.items() if isinstance(event, cls))
    return json.dumps({"kind": kind, **asdict(event)})


def decode(line: str) -> Event:
    record = json.loads(line)
    return KINDS[record.pop("kind")](**record)


def emit(event: Event) -> None:
    """Append `event` to this trial's events file, if a sweep named one."""
    if path := value(EVENTS):
        with open(path, "a") as handle:
            handle.write(encode(event) + "\n")


class EventReader:
    """The events a trial has appended since the last read (a line still being written waits for the next)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new(self) -> list[Event]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                text = handle.read()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [decode(line) for line in complete.decode().splitlines() if line.strip()]
