"""What a person sees: the run console (quiet lines, progress bar, failed step's log) and the
filter of TensorFlow's native noise, on real output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from pipeline.console import RunConsole, step_name
from tests.helpers import real_faces

ROOT = Path(__file__).resolve().parents[1]

# What kfp.local prints for a task, coloured as it is (abridged from a real run's log).
TASK = [
    "18:02:11.120 - INFO - Executing task \x1b[96m'train-op'\x1b[0m",
    '    {"inputs": {"parameterValues": {"recipe": {"epochs": 1}}}}',
    "    [train] baseline_cnn: 420,231 parameters, 5,600 train / 620 val faces",
    "    [progress] baseline_cnn epoch 1/1 [######..................] 22/88 loss 1.9 ETA 30 s",
    "    [progress] baseline_cnn epoch 1/1 [############............] 44/88 loss 1.8 ETA 20 s",
    "    [train] baseline_cnn epoch 1/1: loss 1.8000  accuracy 0.2500 (41 s)",
    "18:02:52.301 - INFO - Task \x1b[96m'train-op'\x1b[0m finished with status "
    "\x1b[92mSUCCESS\x1b[0m",
    "18:02:52.302 - INFO - Skipping conditional task condition-4 (condition evaluated to False)",
]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(terminal, verbose=False, lines=TASK):
    log = io.StringIO()
    console = RunConsole(terminal, log, verbose)
    console.write("\n".join(lines) + "\n")
    return terminal.getvalue(), log.getvalue()


def test_quiet_console_keeps_step_lines_and_logs_everything_without_colours():
    shown, log = feed(io.StringIO())
    assert shown.splitlines() == [
        "    [train] baseline_cnn: 420,231 parameters, 5,600 train / 620 val faces",
        "    [train] baseline_cnn epoch 1/1: loss 1.8000  accuracy 0.2500 (41 s)",
        f"  {'train':<22} {'done':<8} {0.0:7.1f} s"]
    assert "\x1b[" not in log and len(log.splitlines()) == len(TASK)
    assert "Skipping conditional task" in log and "Skipping" not in shown


def test_a_terminal_gets_a_progress_bar_that_updates_in_place():
    shown, _ = feed(Tty())
    assert shown.count("\r\x1b[K  baseline_cnn epoch 1/1 [") == 2
    assert "\r\x1b[K    [train] baseline_cnn epoch 1/1: loss" in shown  # the bar is cleared


def test_verbose_shows_everything_and_colours_only_on_a_terminal():
    plain, _ = feed(io.StringIO(), verbose=True)
    assert len(plain.splitlines()) == len(TASK) and "\x1b[" not in plain
    coloured, _ = feed(Tty(), verbose=True)
    assert "\x1b[96m'train-op'\x1b[0m" in coloured


def test_a_failed_step_shows_its_whole_log():
    lines = [*TASK[:3], "    ValueError: source does not exist: /nowhere",
             "18:02:52.301 - INFO - Task 'ingest-op' finished with status FAILURE"]
    lines[0] = "18:02:11.120 - INFO - Executing task 'ingest-op'"
    shown, _ = feed(io.StringIO(), lines=lines)
    assert "ingest                 failure" in shown
    assert "--- ingest failed; its log: ---" in shown
    assert "  ValueError: source does not exist: /nowhere" in shown
    assert step_name("train-op-2") == "train 2" and step_name("teacher-op") == "teacher"
    assert step_name("skip-deploy-op") == "not deployed (gate)"


def run_cli(*args, env=None):
    return subprocess.run([str(Path(sys.executable).parent / "fer-pipeline"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_no_cuda_or_cpu_feature_lines_without_verbose():
    face = str(real_faces("test", "happy", 1)[0])
    quiet = run_cli("predict", face, env={"FER_VERBOSE": ""})
    assert quiet.returncode == 0, quiet.stderr
    assert "happy" in quiet.stdout or "face" in quiet.stdout
    for noise in ("E0000", "cuInit", "cuda drivers", "cpu_feature_guard", "oneDNN"):
        assert noise not in quiet.stderr, quiet.stderr
    loud = run_cli("predict", face, "--verbose")
    assert "Could not find cuda drivers" in loud.stderr  # the filter is what removed them
    assert loud.stdout == quiet.stdout
