"""Model registration: which trained SEER model versions exist, where their artifacts live, how they scored.

Two backends behind `ModelRegistry`:

- `StorageRegistry(root_uri)` (default): JSON in object storage via `seer.storage`:
  `<root>/models/<name>/versions/<version>.json` (one entry each), `<root>/models/<name>/index.json`
  and `<root>/index.json` (written after the entry, so a crash leaves an entry the next run re-indexes).
- `KubeflowModelRegistry(address)`: the Kubeflow Model Registry (`model-registry` client, optional extra
  `registry`), used when an http(s) address is configured.

Registration is idempotent: the same name + version + sha256 returns the existing entry; the same
name + version with another sha256 is refused (versions are immutable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from seer import storage
from seer.errors import ConfigError, NotFoundError, SeerError

REGISTRY_URL_ENV = "SEER_MODEL_REGISTRY_URL"  # Kubeflow Model Registry address (http[s]://host[:port])
REGISTRY_TOKEN_ENV = "SEER_MODEL_REGISTRY_TOKEN"
REGISTRY_AUTHOR_ENV = "SEER_MODEL_REGISTRY_AUTHOR"
REGISTRY_URI_ENV = "SEER_REGISTRY_URI"  # object-storage registry root
MODEL_FORMAT = ("pytorch", "2")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HASH_CHUNK = 8 << 20


class RegistryError(SeerError):
    """The registry cannot be reached or refuses an operation."""


class RegistryConflictError(RegistryError):
    """A version already exists with different content."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model version.

    `artifact_uri` is the main artifact (e.g. the sliced checkpoint); `artifacts` names further URIs
    (consolidated checkpoint, eval report, metrics JSON); `metrics` are flat `name → float` scores.
    """

    name: str
    version: str
    artifact_uri: str
    sha256: str
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    preset: str = ""
    parent_run: str = ""
    description: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelEntry:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**known)


def _check_name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value or ""):
        raise ConfigError(
            f"model {kind} {value!r} is invalid; use up to 128 letters, digits, '.', '_' or '-' "
            "starting with a letter or digit (e.g. seer-rg10b, 2026-11-28.1)"
        )
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def flatten_metrics(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) JSON object as `a.b.c → float`; other values are skipped."""
    out: dict[str, float] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out |= flatten_metrics(value, f"{prefix}{key}.")
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix[:-1]] = float(data)
    return out


def _absolute(uri: str) -> str:
    """Relative local paths become absolute, so an entry still points at its artifact from elsewhere."""
    path = storage.local_path(uri)
    return str(path.resolve()) if path is not None and not path.is_absolute() else uri


def artifact_sha256(uri: str) -> str:
    """sha256 of one object, or for a folder/prefix the sha256 of its sorted `relative-path sha256` lines."""

    def file_hash(u: str) -> str:
        digest = hashlib.sha256()
        with storage.open(u, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    if storage.exists(uri):
        return file_hash(uri)
    objects = storage.list(uri, recursive=True)
    if not objects:
        raise NotFoundError(f"artifact {uri} does not exist (no object, no objects under it); check the URI")
    base = uri.rstrip("/") + "/"
    lines = [
        f"{o.uri[len(base) :] if o.uri.startswith(base) else o.uri} {file_hash(o.uri)}\n" for o in objects
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


class ModelRegistry(ABC):
    """Register model versions and look them up."""

    @abstractmethod
    def _find(self, name: str, version: str) -> ModelEntry | None:
        """The stored entry, or None."""

    @abstractmethod
    def _store(self, entry: ModelEntry) -> None:
        """Persist a new entry."""

    @abstractmethod
    def list_models(self) -> list[str]:
        """Registered model names, sorted."""

    @abstractmethod
    def list_versions(self, name: str) -> list[ModelEntry]:
        """Versions of `name`, oldest registration first (empty if none)."""

    def register(
        self,
        name: str,
        version: str,
        artifact_uri: str,
        *,
        sha256: str | None = None,
        metrics: Mapping[str, float] | None = None,
        artifacts: Mapping[str, str] | None = None,
        preset: str = "",
        parent_run: str = "",
        description: str = "",
    ) -> ModelEntry:
        """Register `name`/`version`; returns the existing entry when it has the same sha256.

        `sha256` defaults to the hash of the artifact (streamed from storage; folders hash their listing).
        """
        _check_name("name", name)
        _check_name("version", version)
        artifact_uri = _absolute(artifact_uri)
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ConfigError(f"sha256 {sha256!r} is not 64 lowercase hex digits; omit it to compute it")
        sha256 = sha256 or artifact_sha256(artifact_uri)
        existing = self._find(name, version)
        if existing is not None:
            if existing.sha256 != sha256:
                raise RegistryConflictError(
                    f"model {name} version {version} is already registered with sha256 {existing.sha256[:12]}… "
                    f"(artifact {existing.artifact_uri}), not {sha256[:12]}…; register under a new version"
                )
            self._store(existing)  # finishes an interrupted registration (e.g. a missing index row)
            return existing
        entry = ModelEntry(
            name=name,
            version=version,
            artifact_uri=artifact_uri,
            sha256=sha256,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            artifacts={k: _absolute(v) for k, v in (artifacts or {}).items()},
            preset=preset,
            parent_run=parent_run,
            description=description,
            created_at=_now(),
        )
        self._store(entry)
        return entry

    def get(self, name: str, version: str) -> ModelEntry:
        """The entry of `name`/`version`; NotFoundError naming what exists otherwise."""
        entry = self._find(_check_name("name", name), _check_name("version", version))
        if entry is None:
            known = [e.version for e in self.list_versions(name)]
            raise NotFoundError(
                f"model {name} has no version {version}; registered versions: {', '.join(known) or 'none'}"
            )
        return entry

    def latest(self, name: str) -> ModelEntry:
        """The most recently registered version of `name`."""
        versions = self.list_versions(_check_name("name", name))
        if not versions:
            raise NotFoundError(
                f"no versions of model {name} are registered; known models: {', '.join(self.list_models()) or 'none'}"
            )
        return versions[-1]

    def get_metrics(self, name: str, version: str) -> dict[str, float]:
        """The metrics stored with `name`/`version` (`version="latest"` for the newest)."""
        entry = self.latest(name) if version == "latest" else self.get(name, version)
        return dict(entry.metrics)


class StorageRegistry(ModelRegistry):
    """A registry kept as JSON objects under `root_uri` (local folder, s3://, minio://)."""

    def __init__(self, root_uri: str) -> None:
        self.root = str(root_uri).rstrip("/")

    def _version_uri(self, name: str, version: str) -> str:
        return storage.join(self.root, "models", name, "versions", f"{version}.json")

    def _find(self, name: str, version: str) -> ModelEntry | None:
        uri = self._version_uri(name, version)
        return ModelEntry.from_dict(storage.read_json(uri)) if storage.exists(uri) else None

    def _store(self, entry: ModelEntry) -> None:
        uri = self._version_uri(entry.name, entry.version)
        if not storage.exists(uri):
            storage.write_json(uri, entry.to_dict())
        versions = self.list_versions(entry.name)
        model_index = {
            "name": entry.name,
            "latest": versions[-1].version,
            "versions": [
                {"version": v.version, "sha256": v.sha256, "created_at": v.created_at} for v in versions
            ],
        }
        storage.write_json(storage.join(self.root, "models", entry.name, "index.json"), model_index)
        index_uri = storage.join(self.root, "index.json")
        index = storage.read_json(index_uri) if storage.exists(index_uri) else {"models": {}}
        index["models"][entry.name] = {"latest": model_index["latest"], "versions": len(versions)}
        storage.write_json(index_uri, index)

    def list_models(self) -> list[str]:
        folders = storage.list(storage.join(self.root, "models"), recursive=False)
        return sorted(f.uri.rstrip("/").rsplit("/", 1)[-1] for f in folders if f.is_dir)

    def list_versions(self, name: str) -> list[ModelEntry]:
        objects = storage.list(storage.join(self.root, "models", name, "versions"), recursive=False)
        entries = [ModelEntry.from_dict(storage.read_json(o.uri)) for o in objects if o.uri.endswith(".json")]
        return sorted(entries, key=lambda e: (e.created_at, e.version))


class KubeflowModelRegistry(ModelRegistry):
    """The Kubeflow Model Registry (Kubeflow Hub) through the `model-registry` client.

    Each version is a ModelVersion whose custom properties carry sha256, preset, parent run, created_at,
    `metric.<name>` floats and `artifact.<name>` URIs; its ModelArtifact holds `artifact_uri`.
    `client` is for tests; normally it is built from `address` (the constructor contacts the server).
    """

    def __init__(
        self,
        address: str,
        *,
        author: str | None = None,
        port: int | None = None,
        token: str | None = None,
        client: Any = None,
    ) -> None:
        self.address = address
        if client is None:
            try:
                from model_registry import ModelRegistry as Client
            except ImportError:
                raise ConfigError(
                    "the Kubeflow Model Registry needs the model-registry package: "
                    "pip install 'seer-kubeflow[registry]', or unset SEER_MODEL_REGISTRY_URL to use a storage registry"
                ) from None
            try:
                client = Client(
                    address,
                    port,
                    author=author or os.environ.get(REGISTRY_AUTHOR_ENV, "seer"),
                    user_token=token or os.environ.get(REGISTRY_TOKEN_ENV) or None,
                )
            except Exception as err:  # the client raises many types (aiohttp, StoreError, ...)
                raise RegistryError(
                    f"cannot reach the Kubeflow Model Registry at {address} ({type(err).__name__}: {err}); "
                    f"check {REGISTRY_URL_ENV}, the port (default 8080 for http, 443 for https) and the token"
                ) from None
        self._client = client

    def _entry(self, name: str, mv: Any) -> ModelEntry:
        props = dict(mv.custom_properties or {})
        artifact = self._client.get_model_artifact(name, mv.name)
        return ModelEntry(
            name=name,
            version=mv.name,
            artifact_uri=getattr(artifact, "uri", "") or "",
            sha256=str(props.get("sha256", "")),
            metrics={k[7:]: float(v) for k, v in props.items() if k.startswith("metric.")},
            artifacts={k[9:]: str(v) for k, v in props.items() if k.startswith("artifact.")},
            preset=str(props.get("preset", "")),
            parent_run=str(props.get("parent_run", "")),
            description=getattr(mv, "description", None) or "",
            created_at=str(props.get("created_at", "")),
        )

    def _find(self, name: str, version: str) -> ModelEntry | None:
        if self._client.get_registered_model(name) is None:
            return None
        mv = self._client.get_model_version(name, version)
        return None if mv is None else self._entry(name, mv)

    def _store(self, entry: ModelEntry) -> None:
        if self._find(entry.name, entry.version) is not None:
            return
        metadata: dict[str, Any] = {
            "sha256": entry.sha256,
            "preset": entry.preset,
            "parent_run": entry.parent_run,
            "created_at": entry.created_at,
            **{f"metric.{k}": v for k, v in entry.metrics.items()},
            **{f"artifact.{k}": v for k, v in entry.artifacts.items()},
        }
        self._client.register_model(
            entry.name,
            entry.artifact_uri,
            model_format_name=MODEL_FORMAT[0],
            model_format_version=MODEL_FORMAT[1],
            version=entry.version,
            version_description=entry.description or None,
            metadata=metadata,
        )

    def list_models(self) -> list[str]:
        return sorted(m.name for m in self._client.get_registered_models())

    def list_versions(self, name: str) -> list[ModelEntry]:
        if self._client.get_registered_model(name) is None:
            return []
        entries = [self._entry(name, mv) for mv in self._client.get_model_versions(name)]
        return sorted(entries, key=lambda e: (e.created_at, e.version))


def collect_results(results: Mapping[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics (`<eval>.<metric>`) and artifact URIs (`<eval>.metrics`, `<eval>.report`) of evaluation
    result folders keyed by evaluation name; folders without metrics.json (turned off) are skipped."""
    metrics: dict[str, float] = {}
    artifacts: dict[str, str] = {}
    for eval_name, folder in results.items():
        doc_uri = storage.join(folder, "metrics.json")
        if not storage.exists(doc_uri):
            continue  # the run turned this evaluation off
        doc = storage.read_json(doc_uri)
        metrics |= {f"{eval_name}.{k}": v for k, v in flatten_metrics(doc["metrics"]).items()}
        artifacts[f"{eval_name}.metrics"] = doc_uri
        artifacts[f"{eval_name}.report"] = storage.join(folder, "report.html")
    if not metrics:
        raise ConfigError(
            "no evaluation ran, so there is nothing to register; enable at least one evaluation"
        )
    return metrics, artifacts


def compare_with_latest(
    registry: ModelRegistry, name: str, results: Mapping[str, str], threshold: float = 0.01
) -> tuple[str, list[str]]:
    """(Markdown report, regressed `<eval>.<metric>` names) of evaluation result folders against the
    same evaluations of the latest registered version of `name` (`seer eval compare` per evaluation)."""
    from seer.eval import report

    try:
        previous = registry.latest(name)
    except NotFoundError:
        previous = None
    lines = [
        f"# {name}: re-evaluation vs {'version ' + previous.version if previous else 'nothing registered'}"
    ]
    regressions: list[str] = []
    for eval_name, folder in results.items():
        current_uri = storage.join(folder, "metrics.json")
        previous_uri = previous.artifacts.get(f"{eval_name}.metrics") if previous else None
        if not storage.exists(current_uri):
            continue
        if not previous_uri or not storage.exists(previous_uri):
            lines += ["", f"## {eval_name}", "", "no previous run of this evaluation to compare with"]
            continue
        result = report.compare(storage.read_json(current_uri), storage.read_json(previous_uri), threshold)
        regressions += [f"{eval_name}.{m}" for m in result.regressions]
        lines += ["", f"## {eval_name}", "", "```", result.table(), "```"]
    lines += ["", f"regressions beyond {threshold}: {', '.join(regressions) or 'none'}"]
    return "\n".join(lines), regressions


def open_registry(target: str | None = None) -> ModelRegistry:
    """An http(s):// address → Kubeflow Model Registry; any storage URI → StorageRegistry.

    Without `target`: $SEER_MODEL_REGISTRY_URL, else $SEER_REGISTRY_URI.
    """
    target = target or os.environ.get(REGISTRY_URL_ENV) or os.environ.get(REGISTRY_URI_ENV)
    if not target:
        raise ConfigError(
            f"no model registry configured: pass --registry (a storage URI such as s3://bucket/registry, or "
            f"the http(s) address of a Kubeflow Model Registry), or set {REGISTRY_URI_ENV} / {REGISTRY_URL_ENV}"
        )
    if target.startswith(("http://", "https://")):
        return KubeflowModelRegistry(target)
    return StorageRegistry(target)


# -- CLI: `seer register`, `seer registry list|show` ------------------------------------------------


def _metrics_arg(args: argparse.Namespace) -> tuple[dict[str, float], str | None]:
    metrics: dict[str, float] = {}
    if args.metrics:
        metrics |= flatten_metrics(storage.read_json(args.metrics))
    for item in args.metric or []:
        key, _, value = item.partition("=")
        if not key or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            raise ConfigError(
                f"--metric {item!r} is not NAME=NUMBER; write it like --metric linear.top1=0.78"
            )
        metrics[key] = float(value)
    return metrics, args.metrics


def _cmd_register(args: argparse.Namespace) -> int:
    metrics, metrics_uri = _metrics_arg(args)
    artifacts = {}
    for item in args.extra_artifact or []:
        key, sep, uri = item.partition("=")
        if not sep or not key or not uri:
            raise ConfigError(
                f"--extra-artifact {item!r} is not NAME=URI; write it like report=s3://b/report.html"
            )
        artifacts[key] = uri
    if metrics_uri:
        artifacts.setdefault("metrics", metrics_uri)
    entry = open_registry(args.registry).register(
        args.name,
        args.version,
        args.artifact,
        sha256=args.sha256,
        metrics=metrics,
        artifacts=artifacts,
        preset=args.preset or "",
        parent_run=args.parent_run or "",
        description=args.description or "",
    )
    print(json.dumps(entry.to_dict(), indent=2))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    names = [args.name] if args.name else registry.list_models()
    for name in names:
        for e in registry.list_versions(name):
            scores = " ".join(f"{k}={v:g}" for k, v in sorted(e.metrics.items()))
            print(f"{e.name}\t{e.version}\t{e.created_at}\t{e.sha256[:12]}\t{e.artifact_uri}\t{scores}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    entry = registry.latest(args.name) if args.version == "latest" else registry.get(args.name, args.version)
    print(json.dumps(entry.to_dict(), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `seer register` and `seer registry list|show` to the `seer` command (CLI hook)."""
    registry_help = (
        f"registry: a storage URI (s3://bucket/registry, /path) or a Kubeflow Model Registry http(s) address "
        f"(default: ${REGISTRY_URL_ENV}, else ${REGISTRY_URI_ENV})"
    )
    p = subparsers.add_parser(
        "register",
        help="register a trained model version (artifact URIs, sha256, metrics, lineage)",
        description="Idempotent: the same name, version and sha256 returns the existing entry; "
        "a different sha256 for an existing version is refused.",
    )
    p.add_argument("--name", required=True, help="model name, e.g. seer-rg10b")
    p.add_argument("--version", required=True, help="version string, unique per model (e.g. a run id)")
    p.add_argument(
        "--artifact", required=True, help="URI of the main artifact (sliced/consolidated checkpoint)"
    )
    p.add_argument("--sha256", help="artifact sha256 if already known (default: computed from the artifact)")
    p.add_argument("--metrics", help="URI of a metrics JSON (nested numbers are flattened to a.b.c)")
    p.add_argument("--metric", action="append", metavar="NAME=NUMBER", help="one metric, repeatable")
    p.add_argument(
        "--extra-artifact", action="append", metavar="NAME=URI", help="another artifact URI, repeatable"
    )
    p.add_argument("--preset", help="model preset the artifact was trained with (e.g. rg10b)")
    p.add_argument("--parent-run", help="the run that produced it (KFP run id or pretrain output URI)")
    p.add_argument("--description", help="free text shown with the version")
    p.add_argument("--registry", help=registry_help)
    p.set_defaults(func=_cmd_register)

    reg = subparsers.add_parser("registry", help="list and show registered models")
    sub = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="one line per version: name, version, time, sha256, artifact, metrics")
    p.add_argument("--name", help="only this model")
    p.add_argument("--registry", help=registry_help)
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("show", help="print one version's entry as JSON")
    p.add_argument("name", help="model name")
    p.add_argument("version", nargs="?", default="latest", help="version (default: latest)")
    p.add_argument("--registry", help=registry_help)
    p.set_defaults(func=_cmd_show)
