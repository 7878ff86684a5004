"""What a person sees of a local pipeline run: quiet by default, everything with ``--verbose``
(or ``FER_VERBOSE=1``; TensorFlow's native noise is filtered by :mod:`serving.logs`).

:class:`RunConsole` stands in for stdout during the run: the full output, colour codes
stripped, goes to a log file; the terminal gets one line per step with its duration, the
steps' own ``[tag]`` lines, a live progress bar for training epochs, and a failed step's
whole log.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: A line a training step prints for the progress bar (see components.train.fit).
PROGRESS = "[progress] "
#: The prefixes of the lines the steps print for people.
STEP_LINE = re.compile(r"^\[[a-z-]+\] ")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")


#: Steps whose task name reads wrong to people.
STEP_NAMES = {"skip deploy": "not deployed (gate)"}


def step_name(task: str) -> str:
    """A KFP task's name as people read it: ``train-op-2`` -> ``train 2``."""
    name = re.sub(r"-op(?=-|$)", "", task).replace("-", " ")
    return STEP_NAMES.get(name, name)


class RunConsole(io.TextIOBase):
    """A stand-in for ``sys.stdout`` during a local pipeline run (see the module's doc)."""

    def __init__(self, terminal: IO[str], log: IO[str], verbose: bool = False):
        self.terminal, self.log, self.verbose = terminal, log, verbose
        self.tty = terminal.isatty()
        self._partial = ""
        self._started: dict[str, float] = {}
        self._lines: dict[str, list[str]] = {}
        self._current = ""
        self._bar = False
        self._lock = threading.Lock()

    def writable(self) -> bool:
        """Always: this stream takes text."""
        return True

    def write(self, text: str) -> int:
        """Take output; route every complete line (once the run is over, pass it to the
        terminal: a logging handler made during the run may still hold this stream)."""
        if self.closed:
            return self.terminal.write(text)
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._route(line)
        return len(text)

    def flush(self) -> None:
        """Flush the terminal and the log."""
        self.terminal.flush()
        if not self.closed:
            self.log.flush()

    def _show(self, text: str) -> None:
        if self._bar:
            self.terminal.write("\r\x1b[K")
            self._bar = False
        self.terminal.write(text + "\n")
        self.terminal.flush()

    def _route(self, line: str) -> None:
        plain = ANSI.sub("", line.replace("\r", ""))
        self.log.write(plain + "\n")
        if self.verbose:
            self._show(line if self.tty else plain)
            return
        text = plain.strip()
        if start := _TASK_START.search(text):
            self._current = start.group(1)
            self._started[self._current] = time.perf_counter()
            self._lines[self._current] = []
            return
        if end := _TASK_END.search(text):
            task, status = end.groups()
            seconds = time.perf_counter() - self._started.get(task, time.perf_counter())
            word = "done" if status == "SUCCESS" else status.lower()
            self._show(f"  {step_name(task):<22} {word:<8} {seconds:7.1f} s")
            if status != "SUCCESS":
                self._dump(task)
            self._current = ""
            return
        if text.startswith(PROGRESS):
            if self.tty:
                self.terminal.write("\r\x1b[K  " + text[len(PROGRESS):])
                self.terminal.flush()
                self._bar = True
            return
        if self._current:
            self._lines[self._current].append(text)
        if STEP_LINE.match(text):
            self._show("    " + text)

    def _dump(self, task: str) -> None:
        self._show(f"--- {step_name(task)} failed; its log: ---")
        for kept in self._lines.get(task, []):
            self._show("  " + kept)

    def step_failed(self) -> None:
        """Show the log of the step that was running when the run failed (kfp.local raises
        without a last line for it)."""
        with self._lock:
            if self._current and not self.verbose:
                self._dump(self._current)
                self._current = ""


@contextmanager
def run_console(log_path: Path, verbose: bool) -> Iterator[RunConsole]:
    """Route stdout through a :class:`RunConsole` writing the full log to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stdout
    with log_path.open("a", encoding="utf-8") as log:
        console = RunConsole(terminal, log, verbose)
        sys.stdout = console
        try:
            yield console
        finally:
            console.flush()
            console.close()
            sys.stdout = terminal
