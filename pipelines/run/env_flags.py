"""Command-line flags of the run scripts whose defaults come from environment variables (the Makefile's
settings), so `make pretrain-10b NODES=8` and `--nodes 8` mean the same."""

from __future__ import annotations

import argparse
import os
from typing import Any


def env_option(p: argparse.ArgumentParser, flag: str, env: str, default: str, help: str, **kw: Any) -> None:
    """Add `flag` defaulting to environment variable `env` (else `default`, a string argparse converts
    with `type=`); the help names the variable."""
    p.add_argument(flag, default=os.environ.get(env, default), help=f"{help} ({env})", **kw)


def env_switch(p: argparse.ArgumentParser, flag: str, env: str, help: str) -> None:
    """Add an on/off `flag` that is on by default when `env` is set to anything but '', '0' or 'false'."""
    on = os.environ.get(env, "0") not in ("", "0", "false")
    p.add_argument(flag, action="store_true", default=on, help=f"{help} ({env}=1)")
