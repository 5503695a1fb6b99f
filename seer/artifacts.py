"""Pipeline artifacts are references: a small JSON *descriptor* names where the bytes are.

A KFP launcher copies every input artifact into the pod before a step starts and uploads every
output after it ends, so a KFP artifact holds only a descriptor (format ``seer-artifact/1``; see
docs/artifacts.md): the data URI, digests, sizes, counts and the model preset. The heavy bytes
(shards, checkpoints, slices, classifiers, generated sets) live under the run's ``data_root`` and
are read and written through ``seer.storage`` by the steps themselves.

``write_descriptor`` refuses a descriptor over ``MAX_DESCRIPTOR_BYTES``; ``resolve`` turns a
descriptor's URI into the data URI and passes any other URI through, so a library call accepts a
descriptor or the data itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from seer import storage
from seer.errors import ConfigError, NotFoundError

FORMAT = "seer-artifact/1"
MAX_DESCRIPTOR_BYTES = 64 * 1024
KINDS = ("images", "listing", "partition", "shards", "run", "checkpoint", "sliced", "classifier")
_SNIFF_BYTES = 64


def content_key(*parts: Any) -> str:
    """A short stable name (16 hex digits of sha256) for JSON-able values: a content-addressed folder."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_location(data_root: str, *parts: str) -> str:
    """Where a step keeps its bytes: ``data_root/parts...``; an empty ``data_root`` is an error."""
    if not data_root:
        raise ConfigError(
            "data_root is empty: set the pipeline parameter data_root to a folder or an "
            "s3:// / minio:// prefix where the run may write its data"
        )
    return storage.join(data_root, *parts)


def write_descriptor(path: str, kind: str, uri: str, **fields: Any) -> dict:
    """Write the descriptor of ``uri`` (bytes of kind ``kind``) to ``path`` and return it.

    ``fields``: sha256, bytes, count, preset, digest, prefix, or anything JSON-able that a reader
    needs (kept small: the whole document must stay under MAX_DESCRIPTOR_BYTES)."""
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; use one of {KINDS}")
    doc = {"format": FORMAT, "kind": kind, "uri": uri, **fields}
    doc["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(doc, indent=1, sort_keys=False, default=str)
    if len(text.encode()) > MAX_DESCRIPTOR_BYTES:
        raise ConfigError(
            f"the {kind} descriptor of {uri} is {len(text.encode())} bytes, over {MAX_DESCRIPTOR_BYTES}: "
            "keep per-sample lists in the data folder and reference them by URI"
        )
    storage.write_bytes(path, text.encode())
    return doc


def is_descriptor(uri: str) -> bool:
    """Whether ``uri`` is one object holding a seer artifact descriptor."""
    if not storage.exists(uri):
        return False
    with storage.open(uri, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    return head.lstrip().startswith(b"{") and FORMAT.encode() in head


def read_descriptor(uri: str, kind: str | None = None) -> dict:
    """The descriptor at ``uri``; with ``kind``, fail unless it describes that kind of bytes."""
    if not is_descriptor(uri):
        raise NotFoundError(
            f"{uri} is not a seer artifact descriptor ({FORMAT}): connect the output of the step that "
            "made it, or pass the data URI itself"
        )
    doc = storage.read_json(uri)
    if kind is not None and doc.get("kind") != kind:
        raise ConfigError(
            f"{uri} describes {doc.get('kind')!r} data, this step needs {kind!r}: check the wiring"
        )
    return doc


def resolve(uri: str) -> str:
    """The data URI behind ``uri``: a descriptor's ``uri``, any other URI unchanged."""
    return storage.read_json(uri)["uri"] if is_descriptor(uri) else uri


def metadata(doc: dict) -> dict:
    """The descriptor's scalar fields, for the KFP artifact metadata the UI shows."""
    return {k: v for k, v in doc.items() if isinstance(v, str | int | float | bool) and k != "format"}
