"""`python -m pipeline <command>`: the same commands as the MLproject entry points."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import DATASETS, PROFILES, VARIANTS, ConfigError, resolve_config
from pipeline.data import DataError


def optional_int(text: str) -> int | None:
    """MLproject passes unset parameters as empty strings: '' means "use the profile's value"."""
    if text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist", help=f"one of {', '.join(DATASETS)} (default mnist)")
    parser.add_argument("--profile", default="quick", help=f"one of {', '.join(PROFILES)} (default quick)")
    parser.add_argument("--epochs", type=optional_int, default=None, help="override the profile's epochs")
    parser.add_argument(
        "--steps-per-epoch", type=optional_int, default=None, help="override the profile's steps per epoch"
    )
    parser.add_argument("--experiment", default="", help="MLflow experiment (default <dataset>-<profile>)")
    parser.add_argument("--variant", default="stacked", help=f"SGAN variant: one of {', '.join(VARIANTS)}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for method, help_text in (("sgan", "train a semi-supervised GAN"), ("cnn", "train the CNN baseline")):
        sub = commands.add_parser(method, help=help_text)
        sub.add_argument("--labels", type=int, default=100, help="labeled training examples (default 100)")
        sub.add_argument("--seed", type=int, default=0, help="fixes the labeled subset and the initialisation")
        sub.add_argument("--parent-run-id", default=None, help=argparse.SUPPRESS)
        add_run_arguments(sub)
    return parser


def run_single(args: argparse.Namespace) -> int:
    config = resolve_config(
        method=args.command,
        dataset=args.dataset,
        labels=args.labels,
        seed=args.seed,
        profile=args.profile,
        variant=args.variant,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        experiment=args.experiment or None,
    )
    from pipeline.runs import train_run  # heavy imports only once the input is known to be good

    train_run(config, bool(args.experiment), args.parent_run_id, verbose=not args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_single(args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
