"""Preflight for `network=efa`: the trainer image must carry the NCCL EFA plugin (aws-ofi-nccl) and
libfabric. Without them NCCL silently falls back to TCP sockets, which at 62×8 GPUs is many times
slower yet looks like a healthy run; the check turns that into a failed pod with a clear message.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from seer.errors import ConfigError

# Where the AWS EFA installer puts libfabric and aws-ofi-nccl, then the usual library folders.
EFA_LIB_DIRS = ("/opt/amazon/ofi-nccl/lib", "/opt/amazon/efa/lib", "/opt/aws-ofi-nccl/lib")
SYSTEM_LIB_DIRS = ("/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
# aws-ofi-nccl ships the plugin as libnccl-net-ofi.so (1.9+) and libnccl-net.so (what NCCL loads by default).
NCCL_EFA_PLUGINS = ("libnccl-net-ofi.so", "libnccl-net.so", "libnccl-net-aws-ofi.so")
LIBFABRIC = ("libfabric.so.1", "libfabric.so")


def library_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """LD_LIBRARY_PATH entries, then the EFA installer's and the system's library folders."""
    env = os.environ if env is None else env
    dirs = [d for d in (env.get("LD_LIBRARY_PATH") or "").split(":") if d]
    return [Path(d) for d in dict.fromkeys([*dirs, *EFA_LIB_DIRS, *SYSTEM_LIB_DIRS])]


def _find(names: Iterable[str], dirs: list[Path]) -> Path | None:
    return next((d / n for d in dirs for n in names if (d / n).exists()), None)


def check_efa(env: Mapping[str, str] | None = None) -> list[Path]:
    """Paths of the NCCL EFA plugin and libfabric; ConfigError naming the fix when either is missing."""
    dirs = library_dirs(env)
    plugin, fabric = _find(NCCL_EFA_PLUGINS, dirs), _find(LIBFABRIC, dirs)
    missing = [what for what, path in (("aws-ofi-nccl", plugin), ("libfabric", fabric)) if path is None]
    if missing:
        raise ConfigError(
            f"network=efa but this image has no {' and no '.join(missing)} (looked in "
            f"{', '.join(str(d) for d in dirs)}); NCCL would fall back to TCP. Build the trainer image with "
            "--build-arg EFA_INSTALLER_VERSION=<version> (images/trainer/Dockerfile) or use --network tcp"
        )
    return [plugin, fabric]
