"""`python -m seer.launch.elastic TORCHRUN_ARGS`: torchrun, exiting with codes the Training Operator reads.

Plain torchrun exits 1 for every failure, including a SIGTERM to the agent (preemption) and a worker
group that exhausted `--max-restarts` after a lost rank, and under `restartPolicy: ExitCode` the
operator treats 1-127 as permanent (training-operator v1 `IsRetryableExitCode`: exitCode >= 128).
This wrapper runs the same launcher (`torch.distributed.run`) and maps the outcome:

- success: 0;
- the agent got a termination signal (SIGTERM from the kubelet; the agent forwarded it to the workers,
  which saved and exited): `RESUMABLE_EXIT_CODE`;
- rendezvous failed (a peer node did not come back in time): `RESUMABLE_EXIT_CODE`;
- the worker group failed: `seer.train.faults.group_exit_code` of the workers' codes (retryable when
  any worker exited resumable or was killed by a signal; a worker's own 1-127 error otherwise).
"""

from __future__ import annotations

import sys

from seer.train.faults import RESUMABLE_EXIT_CODE, group_exit_code


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with `argv` (its own command line) and return the exit code for the pod."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        codes = [failure.exitcode for failure in err.failures.values()]
        code = group_exit_code(codes)
        print(f"seer.launch.elastic: workers exited {codes}; exit {code}", file=sys.stderr, flush=True)
        return code
    except SignalException as err:
        print(
            f"seer.launch.elastic: agent got {err.sigval.name}; exit {RESUMABLE_EXIT_CODE}", file=sys.stderr
        )
        return RESUMABLE_EXIT_CODE
    except RendezvousError as err:
        print(f"seer.launch.elastic: rendezvous failed ({err}); exit {RESUMABLE_EXIT_CODE}", file=sys.stderr)
        return RESUMABLE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
