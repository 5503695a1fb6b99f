"""Killing a command midway, as a preempted pod would be."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def sigkill_once_exists(cmd: list[str], marker: Path, cwd: Path, timeout: float = 120) -> None:
    """Start `cmd` in its own session, wait for `marker` to appear, then SIGKILL the whole group.

    Fails if the command exits first (with its stderr) or `marker` takes longer than `timeout`.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"no {marker.name} within {timeout:.0f} s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
