"""The MLproject file, generated from the CLI's parser: each entry point is the command of the same name,
each parameter one of its flags with the flag's default. `python -m pipeline.mlproject` rewrites it;
a test checks that the committed file is what this writes."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from pipeline.config import METHODS, takes, user_settings

ENTRY_POINTS = (*METHODS, "sweep", "report", "main")
# flags that are not parameters: `mlflow run` sets the experiment (--experiment-name) and the tracking URI itself;
# the report's experiment is the one it reads, so it stays
NOT_PARAMETERS = {"help", "quiet", "parent_run_id", "tracking_uri"}
HEADER = """\
name: sgan-bench

conda_env: conda.yaml

# Generated from the CLI (`python -m pipeline.mlproject`; tests/test_mlproject.py checks it): each entry point
# runs `python -m pipeline <entry point>` with every parameter as the flag of the same name (underscores as
# dashes) and the CLI's default; an empty value means "the default" (the profile's epochs). The experiment is
# `mlflow run`'s own `--experiment-name`. In sweeps, methods, labels, seeds, variant, generator_loss and augment
# take comma-separated lists.
entry_points:
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices


def parameters(name: str, command: argparse.ArgumentParser) -> dict[str, str]:
    """(parameter, default as text) of an entry point: its command's flags, less those a method does not take."""
    untaken = {f.name for f in user_settings() if name in METHODS and not takes(name, f)}
    skipped = NOT_PARAMETERS | untaken | ({"experiment"} if name != "report" else set())
    found = {}
    for action in command._actions:
        if action.dest in skipped or action.help == argparse.SUPPRESS or action.nargs == 0:
            continue
        default = action.default
        found[action.dest] = (
            "" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        )
    return found


def render(parser: argparse.ArgumentParser) -> str:
    lines = [HEADER.rstrip("\n")]
    commands = _subcommands(parser)
    for name in ENTRY_POINTS:
        found = parameters(name, commands[name])
        lines += [f"  {name}:", "    parameters:"]
        lines += [f"      {key}: {{type: string, default: {json.dumps(value)}}}" for key, value in found.items()]
        words = " ".join(f"--{key.replace('_', '-')} {{{key}}}" for key in found)
        wrapped = textwrap.wrap(f"python -m pipeline {name} {words}", 110, break_on_hyphens=False)
        lines += ["    command: >-", *(f"      {line}" for line in wrapped)]
    return "\n".join(lines) + "\n"


def main() -> int:
    from pipeline.cli import build_parser

    text = render(build_parser())
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "MLproject"
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
