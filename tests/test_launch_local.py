"""run_local: real torchrun processes via torchx local_cwd, on a tiny module instead of training."""

from __future__ import annotations

import textwrap

import pytest

from seer.errors import ConfigError
from seer.launch.local import run_local


def test_two_ranks_run_stream_output_and_succeed(tmp_path) -> None:
    (tmp_path / "rankcheck.py").write_text(
        textwrap.dedent(
            """
            import os, sys
            print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} args {sys.argv[1:]}")
            """
        )
    )
    lines: list[str] = []
    rc = run_local(
        ["--alpha", "1"],
        module="rankcheck",
        nproc_per_node=2,
        env={"PYTHONPATH": str(tmp_path)},
        log_dir=str(tmp_path / "logs"),
        on_line=lines.append,
    )
    assert rc == 0
    assert "[0]:rank 0 of 2 args ['--alpha', '1']" in lines
    assert "[1]:rank 1 of 2 args ['--alpha', '1']" in lines


@pytest.mark.slow
def test_a_failing_rank_fails_the_run(tmp_path) -> None:
    (tmp_path / "boom.py").write_text("import os, sys\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    lines: list[str] = []
    rc = run_local([], module="boom", max_restarts=0, env={"PYTHONPATH": str(tmp_path)}, on_line=lines.append)
    assert rc == 1
    assert any("ended FAILED" in line for line in lines)


@pytest.mark.slow
def test_a_killed_rank_is_restarted_with_its_group(tmp_path) -> None:
    """torch elastic agent: a worker killed by SIGKILL fails the group; the agent restarts both workers
    (TORCHELASTIC_RESTART_COUNT 1) while --max-restarts allows, with the same c10d rendezvous."""
    (tmp_path / "flaky.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
            if attempt == "0" and os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            print(f"rank {os.environ['RANK']} attempt {attempt}")
            """
        )
    )
    lines: list[str] = []
    rc = run_local(
        [], module="flaky", max_restarts=1, env={"PYTHONPATH": str(tmp_path)}, on_line=lines.append
    )
    assert rc == 0, lines
    assert "[0]:rank 0 attempt 1" in lines and "[1]:rank 1 attempt 1" in lines
    assert (
        run_local([], module="flaky", max_restarts=0, env={"PYTHONPATH": str(tmp_path)}, on_line=print) == 1
    )


def test_rejects_zero_processes() -> None:
    with pytest.raises(ConfigError, match="nproc_per_node must be at least 1"):
        run_local([], nproc_per_node=0)
