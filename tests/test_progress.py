"""The sweep's progress lines and ETAs, from the events a running trial sends (no processes: real trials'
events are covered by the sweep and executor tests), and the events' own round trip through a file."""

from dataclasses import replace

import pytest

from pipeline.config import resolve_config
from pipeline.sweep.events import CandidateDone, EpochDone, EventReader, encode
from pipeline.sweep.plan import Outcome, Trial
from pipeline.sweep.progress import Progress, clock, makespan


def _trial(method: str, seed: int) -> Trial:
    return Trial(resolve_config(method, dataset="digits", labels=20, seed=seed, profile="smoke"), f"{method}-{seed}")


def _finished(trial: Trial, seconds: float, resumed: bool = False) -> Outcome:
    config = trial.config
    return Outcome(
        config.run_name, config.method, config.arm, config.labels, config.seed, "FINISHED", "run", 0.9, False,
        seconds, resumed=resumed,
    )  # fmt: skip


def test_clock_reads_like_a_duration():
    assert [clock(s) for s in (0, 59.6, 61, 3600, 3725)] == ["0m00s", "1m00s", "1m01s", "1h00m00s", "1h02m05s"]


def test_an_arm_is_projected_from_its_own_trials_only(capsys):
    sgan0, sgan1, cnn0, cnn1 = _trial("sgan", 0), _trial("sgan", 1), _trial("cnn", 0), _trial("cnn", 1)
    progress = Progress(total=4, parallel=2, verbose=True)
    progress.update(sgan0, EpochDone(1, 4, 100.0, {"test_accuracy": 0.5}), [sgan1, cnn0, cnn1])
    line = capsys.readouterr().out
    assert "epoch 1/4, test_accuracy 0.5000 | trial ETA 5m00s" in line
    assert "ETA unknown until a cnn trial is measured" in line  # the SGAN's pace says nothing of the CNN's
    progress.report(_finished(cnn0, 60.0), [sgan1, cnn1])
    # sgan0: 300 s left; sgan1: its arm's projection, 400 s; cnn1: 60 s; two at a time: sgan1 in the free
    # slot, cnn1 after sgan0
    assert progress.eta([sgan0, sgan1, cnn1]) == f"ETA {clock(max(300 + 60, 400))}"
    progress.report(_finished(sgan0, 380.0, resumed=True), [sgan1, cnn1])
    assert "[2/4] sgan-stacked-digits-L20-s0: finished, test accuracy 0.9000 in 6m20s in all (resumed)" in (
        capsys.readouterr().out
    )
    assert progress.eta([sgan1, cnn1]) == f"ETA {clock(380)}"  # measured beats projected; one slot each


def test_the_sweep_ends_when_its_last_slot_does():
    assert makespan([100, 100, 100, 100], 2) == 200
    assert makespan([600, 50, 50, 50], 2) == 600  # a long trial alone sets the end, not the mean load
    assert makespan([10, 20], 4) == 20 and makespan([], 2) == 0


def test_a_resumed_trial_is_projected_from_what_its_checkpoint_has_left(capsys):
    sgan0, sgan1, sgan2 = _trial("sgan", 0), _trial("sgan", 1), _trial("sgan", 2)  # smoke: 2 epochs each
    progress = Progress(total=3, parallel=1, verbose=True)
    progress.resuming(sgan1, "abc123", 1)
    assert "sgan-stacked-digits-L20-s1: resumes run abc123 after epoch 1/2" in capsys.readouterr().out
    progress.report(_finished(sgan0, 600.0), [sgan1, sgan2])
    assert progress.eta([sgan1, sgan2]) == f"ETA {clock(300 + 600)}"  # half of sgan1 left, all of sgan2
    progress.update(sgan1, EpochDone(2, 2, 580.0, {"test_accuracy": 0.5}), [sgan2])  # its own pace from its first line
    assert progress.eta([sgan1, sgan2]) == f"ETA {clock(0 + 600)}"


@pytest.mark.parametrize("reused_first", [None, "without its time", "with its time"])
def test_a_searching_trial_is_projected_from_its_candidates(reused_first, capsys):
    tuned0, tuned1 = _trial("cnn_tuned", 0), _trial("cnn_tuned", 1)
    progress = Progress(total=2, parallel=1, verbose=True)
    reused = CandidateDone(1, 4, {"augment": "none"}, 0.7, 3, None, reused=True)
    if reused_first == "without its time":  # a stopped search's candidate whose run has no time: no projection yet
        progress.update(tuned0, reused, [tuned1])
        assert "ETA unknown until a cnn_tuned trial is measured" in capsys.readouterr().out
    if reused_first == "with its time":  # its time as its run recorded it: a measurement like any other
        progress.update(tuned0, replace(reused, seconds=300.0), [tuned0, tuned1])
        # tuned0: 3 candidates and its training; tuned1: about one candidate
        assert f"sweep ETA {clock(4 * 300 + 300)}" in capsys.readouterr().out
    progress.update(tuned0, CandidateDone(2, 4, {"augment": "shift"}, 0.8, 5, 100.0), [tuned1])
    line = capsys.readouterr().out
    assert "recipe search 2/4: augment=shift: best validation accuracy 0.8000 at epoch 5, 100 s" in line
    # tuned0: two candidates left and its own training (about one candidate); tuned1: about one candidate
    each = 200 if reused_first == "with its time" else 100
    assert progress.eta([tuned0, tuned1]) == f"ETA {clock(3 * each + each)}"


def test_events_come_back_from_their_file_whole_and_in_order_and_a_half_written_line_waits(tmp_path):
    path = tmp_path / "trial.events"
    reader = EventReader(path)
    assert reader.new() == []  # no file yet: the trial has not started
    sent = [
        EpochDone(1, 3, 12.5, {"test_accuracy": 0.5, "val_accuracy": 0.25}),
        CandidateDone(1, 8, {"augment": "shift"}, 0.9, 4),
    ]
    path.write_text(encode(sent[0]) + "\n")
    assert reader.new() == sent[:1]
    with path.open("a") as handle:
        handle.write(encode(sent[1])[:10])  # the trial is writing the line
    assert reader.new() == []
    with path.open("a") as handle:
        handle.write(encode(sent[1])[10:] + "\n")
    assert reader.new() == sent[1:] and reader.new() == []


def test_on_a_terminal_the_sweep_shows_live_bars_and_the_finished_trials_lines():
    import io

    from rich.console import Console

    from pipeline.sweep.progress import Bars

    screen = io.StringIO()
    sgan0, sgan1 = _trial("sgan", 0), _trial("sgan", 1)
    bars = Bars(total=2, console=Console(file=screen, force_terminal=True, width=160))
    progress = Progress(total=2, parallel=1, verbose=True, display=bars)
    progress.update(sgan0, EpochDone(1, 2, 30.0, {"test_accuracy": 0.5}), [sgan0, sgan1])
    assert bars.bars.tasks[1].description == "sgan-stacked-digits-L20-s0" and bars.bars.tasks[1].completed == 1
    assert bars.bars.tasks[0].fields["note"] == "ETA 1m30s"  # sweep: 30 s left of sgan0, then sgan1 as long
    progress.report(_finished(sgan0, 60.0), [sgan1])
    progress.close()
    assert [task.description for task in bars.bars.tasks] == ["sweep"] and bars.bars.tasks[0].completed == 1
    assert "[1/2] sgan-stacked-digits-L20-s0: finished, test accuracy 0.9000 in 1m00s" in screen.getvalue()
