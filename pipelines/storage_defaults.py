"""Default object-storage locations of the pipelines, valid on both KFP install types.

Standalone KFP gives every step one credential for the whole `mlpipeline` bucket. Multi-user KFP gives
each profile namespace its own (Secret `mlpipeline-minio-artifact`, made by the pipelines profile
controller, kubeflow/manifests .../pipelines-profile-controller/sync.py) whose policy allows only
`mlpipeline/artifacts/*`, `mlpipeline/private-artifacts/<namespace>/*`, `mlpipeline/private/<namespace>/*`
and `mlpipeline/shared/*`. The defaults therefore live under `shared/`; use `private_uri(namespace, ...)`
to keep a profile's registry or run records to itself.
"""

from __future__ import annotations

BUCKET = "mlpipeline"
DEFAULT_REGISTRY = f"minio://{BUCKET}/shared/seer/registry"
DEFAULT_STATUS_URI = f"minio://{BUCKET}/shared/seer/runs"
# The runs' data (shards, checkpoints, slices, classifiers, generated sets): docs/artifacts.md.
DEFAULT_DATA_ROOT = f"minio://{BUCKET}/shared/seer/data"
PROFILE_PREFIXES = ("artifacts/", "private-artifacts/{namespace}/", "private/{namespace}/", "shared/")


def private_uri(namespace: str, *parts: str) -> str:
    """A location only profile `namespace` may read and write, e.g. private_uri("team-a", "registry")."""
    return "/".join([f"minio://{BUCKET}/private-artifacts/{namespace}/seer", *parts])


def allowed_in_profile(uri: str, namespace: str) -> bool:
    """Whether a profile's storage credentials (multi-user KFP) may write `uri`."""
    prefix = f"minio://{BUCKET}/"
    if not uri.startswith(prefix):
        return True  # another store: its own credentials decide
    key = uri[len(prefix) :]
    return any(key.startswith(p.format(namespace=namespace)) for p in PROFILE_PREFIXES)
