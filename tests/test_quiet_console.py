"""`make demo`'s console: one line per kfp.local task on the terminal, every line of output in the log.

The task output below is produced the way kfp 2.16's local runner produces it, with kfp's own helpers:
kfp/local/task_dispatcher.py logs "Executing task NAME" and, on success, "Task NAME finished with status
SUCCESS" inside `logging_utils.local_logger_context()` (a handler on the sys.stdout of that moment),
names and statuses coloured by `format_task_name` / `format_status`; a failed task raises RuntimeError
without an end line; subprocess_task_handler.py print()s the step's output under `indented_print()`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kfp.local import logging_utils, status

from pipelines.run.quiet_console import failure_report, quiet_console


def run_task(name: str, output: str, ok: bool = True) -> None:
    """One kfp.local task's console output, as task_dispatcher.run_single_task_implementation writes it."""
    with logging_utils.local_logger_context():
        label = logging_utils.format_task_name(name)
        logging.info(f"Executing task {label}")
        logging.info("Streamed logs:\n")
        with logging_utils.indented_print():
            for line in output.splitlines(keepends=True):
                print(line, end="")
            print("\n")
        if not ok:
            raise RuntimeError(
                f"Task {label} finished with status {logging_utils.format_status(status.Status.FAILURE)}"
            )
        logging.info(
            f"Task {label} finished with status {logging_utils.format_status(status.Status.SUCCESS)}"
        )


def test_the_terminal_gets_one_line_per_task_and_the_log_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "local_run.log"
    with quiet_console(log):
        run_task("generate-corpus", "wrote 256 images\n")
        run_task("pretrain", "[0]: iteration 5 loss 6.65\n" * 200)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["generate-corpus", "done"], ["pretrain", "done"]]
    assert all(line.endswith(" s") for line in lines)  # each with its duration
    text = log.read_text()
    assert text.count("iteration 5 loss 6.65") == 200 and text.count("Executing task") == 2


def test_a_failed_task_closes_its_line_and_the_report_shows_the_commands_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "local_run.log"
    error = "seer pretrain: error: optim.base_lr: must be > 0, got -1; pass a positive learning rate"
    with pytest.raises(RuntimeError), quiet_console(log):
        run_task("merge-shards", "merged 2 partitions\n")
        run_task("pretrain", f"[0]:{error}\n[1]:{error}\n" + "torchrun noise\n" * 40, ok=False)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["merge-shards", "done"], ["pretrain", "failed"]]
    report = failure_report(log)
    assert report.split("errors reported in it:\n")[1].splitlines() == [f"[0]:{error}", f"[1]:{error}"]
    assert "\x1b[" not in report  # kfp's colour codes stripped
