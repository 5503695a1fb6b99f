"""Run a distributed `seer` command on this machine: torchrun via torchx's `local_cwd` scheduler.

torchx's `dist.ddp` component renders the same `torchrun ... -m seer ARGS` a PyTorchJob pod runs
(single node, c10d rendezvous on a free local port), and `local_cwd` starts it as a subprocess in the
current directory with per-rank log files, which we stream line by line while it runs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence

from seer.errors import ConfigError

LineFn = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def run_local(
    args: Sequence[str],
    *,
    nproc_per_node: int = 2,
    max_restarts: int = 3,
    module: str = "seer",
    env: Mapping[str, str] | None = None,
    log_dir: str | None = None,
    on_line: LineFn | None = None,
) -> int:
    """Run `torchrun --nproc-per-node N -m MODULE ARGS` here; stream its output; return its exit status.

    Returns 0 on success, 1 on failure; Ctrl-C/SIGTERM cancels the ranks and re-raises. A failed
    worker group (a rank killed or crashed) is restarted up to `max_restarts` times; the c10d
    rendezvous store lives in the torchrun agent, so it survives those restarts, and `seer pretrain`
    resumes from its newest complete checkpoint.
    Rank output lines are prefixed `[rank]:` by torchrun. Logs stay under `log_dir` (a temp dir by default).
    """
    if nproc_per_node < 1:
        raise ConfigError(f"nproc_per_node must be at least 1 (got {nproc_per_node})")
    if max_restarts < 0:
        raise ConfigError(f"max_restarts must be 0 or more (got {max_restarts})")
    from torchx.components.dist import ddp
    from torchx.runner import get_runner
    from torchx.specs import AppState

    emit = on_line or _print
    # local_cwd runs `torchrun` from PATH: make it this interpreter's, whether or not the venv is active.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    app = ddp(
        *args, m=module, j=f"1x{nproc_per_node}", env={"PATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
    )
    shell = app.roles[0].args  # ["-c", "torchrun --rdzv_backend c10d ... -m MODULE ARGS"]
    shell[-1] = shell[-1].replace("torchrun ", f"torchrun --max_restarts {max_restarts} ", 1)
    role = app.roles[0].name
    with get_runner() as runner:
        handle = runner.run(
            app, scheduler="local_cwd", cfg={"log_dir": log_dir or tempfile.mkdtemp(prefix="seer-local-")}
        )
        try:
            for line in runner.log_lines(handle, role, k=0, should_tail=True):
                emit(line.rstrip("\n"))
            status = runner.wait(handle, wait_interval=0.2)
        except BaseException:
            runner.cancel(handle)
            raise
    state = status.state if status else AppState.UNKNOWN
    if state != AppState.SUCCEEDED:
        emit(f"local run {handle} ended {state.name}")
        return 1
    return 0
