"""`make demo`'s console: kfp.local's whole output goes to a log file, the terminal gets one line per step.

kfp.local prints every step's streamed output, executor input and outputs (about 1500 lines for the
demo). `quiet_console(path)` sends all of it to `path` and shows, per task, its name, how it ended and
how long it took. The lines it recognises are the two kfp 2.16 logs per task
(kfp/local/task_dispatcher.py: "Executing task 'NAME'" and, on success, "Task 'NAME' finished with
status SUCCESS", names and statuses ANSI-coloured by kfp/local/logging_utils.py); a failed task raises
instead of logging its end, so the running line is closed by the exception.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_STARTED = re.compile(r"Executing task '([^']+)'")
_ENDED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class StepLines(io.TextIOBase):
    """A text stream writing everything to `log` and one line per kfp.local task to `terminal`."""

    def __init__(self, log: TextIO, terminal: TextIO) -> None:
        self.log, self.terminal = log, terminal
        self._partial = ""
        self._running: tuple[str, float] | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._show(plain(line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def end(self, outcome: str) -> None:
        """Close the running task's line with `outcome` and its duration (no-op when none runs)."""
        if self._running is None:
            return
        seconds = time.monotonic() - self._running[1]
        self.terminal.write(f"{outcome:<7} {seconds:7.1f} s\n")
        self.terminal.flush()
        self._running = None

    def _show(self, line: str) -> None:
        if started := _STARTED.search(line):
            self.end("?")  # a task that never logged its end
            self._running = (started[1], time.monotonic())
            self.terminal.write(f"  {started[1]:<28} ")
            self.terminal.flush()
        elif (ended := _ENDED.search(line)) and self._running and self._running[0] == ended[1]:
            self.end("done" if ended[2] == "SUCCESS" else ended[2].lower())


@contextlib.contextmanager
def quiet_console(log_path: Path) -> Iterator[StepLines]:
    """Send sys.stdout to `log_path` (rewritten) and step lines to the terminal while the block runs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        lines = StepLines(log, sys.stdout)
        try:
            with contextlib.redirect_stdout(lines):
                yield lines
        except KeyboardInterrupt:
            lines.end("stopped")
            raise
        except BaseException:
            lines.end("failed")
            raise


def failure_report(log_path: Path, tail: int = 20) -> str:
    """What a failed run's log says, for the terminal: its distinct `error:` lines (the one-line errors of
    the `seer` commands), then its last `tail` lines."""
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    lines = [line.strip() for line in plain(text).splitlines()]
    errors = list(dict.fromkeys(line for line in lines if " error: " in f" {line}"))[-5:]
    parts = [f"last {tail} lines of {log_path}:", *lines[-tail:]]
    if errors:
        parts += ["errors reported in it:", *errors]
    return "\n".join(parts)


def plain(text: str) -> str:
    """`text` without ANSI colour codes (kfp.local colours task names and statuses)."""
    return _ANSI.sub("", text)
