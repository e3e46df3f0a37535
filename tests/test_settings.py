"""Settings are defined once (a `setting()` field of RunConfig): a new one, declared in a single place,
reaches the CLI, the MLproject file, the sweep's trial commands, the logged params and the report, and leaves
the fingerprints of earlier runs as they were."""

import dataclasses

import pandas as pd
import pytest

from pipeline import config as settings
from pipeline.config import ConfigError, RunConfig, fingerprint, resolve_config, setting


@pytest.fixture
def with_dropout(monkeypatch):
    """RunConfig with one more setting, the way a developer would add it: one field."""
    extended = dataclasses.make_dataclass(
        "RunConfig",
        [("dropout", float, setting(0.4, "dropout before the heads", methods=("sgan", "cnn"), later=True))],
        bases=(RunConfig,),
        frozen=True,
    )
    monkeypatch.setattr(settings, "RunConfig", extended)
    return extended


def test_a_setting_added_in_one_place_reaches_every_layer(with_dropout):
    from pipeline.cli import build_parser, setting_values
    from pipeline.mlproject import render
    from pipeline.report.runs import _param
    from pipeline.sweep.plan import trial_command

    args = build_parser().parse_args(["sgan", "--dropout", "0.25"])  # the CLI
    config = resolve_config("sgan", **setting_values(args))
    assert config.dropout == 0.25 and config.as_params()["dropout"] == 0.25  # the params
    command = trial_command(config, "parent")  # what a sweep runs
    assert command[command.index("--dropout") + 1] == "0.25"
    assert "--dropout" not in trial_command(resolve_config("cnn_tuned"), "parent")  # a method that does not take it
    text = render(build_parser())  # the MLproject file
    assert 'dropout: {type: string, default: "0.4"}' in text and "--dropout {dropout}" in text
    assert _param(pd.DataFrame(index=[0]), "dropout").tolist() == ["0.4"]  # the report, for runs logged before it
    with pytest.raises(ConfigError, match=r"dropout=0\.1: cnn_tuned does not take this setting \(only sgan, cnn\)"):
        resolve_config("cnn_tuned", dropout=0.1)


def test_a_later_setting_at_its_default_keeps_earlier_runs_fingerprints(with_dropout):
    before = fingerprint(RunConfig("sgan"), "data")
    assert fingerprint(resolve_config("sgan"), "data") == before
    assert fingerprint(resolve_config("sgan", dropout=0.5), "data") != before


def test_unknown_settings_and_bad_choices_are_refused_by_name():
    with pytest.raises(TypeError, match="unknown settings: colour"):
        resolve_config("sgan", colour="red")
    with pytest.raises(ConfigError, match="precision='float16' is not one of float32, bfloat16"):
        resolve_config("sgan", precision="float16")
