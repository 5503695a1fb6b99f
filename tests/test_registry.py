"""Model registry: storage-backed (local folder and S3 via moto) and Kubeflow Model Registry (through a fake
of the `model-registry` client surface), plus `seer register` / `seer registry` on the command line."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Any

import pytest

from seer import storage
from seer.cli import main
from seer.errors import ConfigError, NotFoundError
from seer.registry import (
    KubeflowModelRegistry,
    RegistryConflictError,
    StorageRegistry,
    artifact_sha256,
    flatten_metrics,
    open_registry,
)


class FakeModelRegistryClient:
    """A FAKE of `model_registry.ModelRegistry` (0.3.x): the six methods KubeflowModelRegistry calls,
    in memory, with the same argument names and return shapes (objects with name/custom_properties/uri).
    No Model Registry server can run here, and the real client contacts one in its constructor."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.register_calls = 0

    def register_model(self, name, uri, *, model_format_name, model_format_version, version, **kw):
        for value in (kw.get("metadata") or {}).values():
            assert isinstance(value, (str, int, float, bool)), (
                "the server stores scalar custom properties only"
            )
        versions = self.models.setdefault(name, {})
        assert version not in versions, "the server refuses a duplicate version"
        self.register_calls += 1
        mv = SimpleNamespace(
            name=version,
            custom_properties=dict(kw.get("metadata") or {}),
            description=kw.get("version_description"),
        )
        versions[version] = (mv, SimpleNamespace(uri=uri, model_format_name=model_format_name))
        return SimpleNamespace(name=name)

    def get_registered_model(self, name):
        return SimpleNamespace(name=name) if name in self.models else None

    def get_model_version(self, name, version):
        if name not in self.models:
            raise RuntimeError(f"Model {name} does not exist")  # the real client raises StoreError
        found = self.models[name].get(version)
        return found[0] if found else None

    def get_model_artifact(self, name, version):
        return self.models[name][version][1]

    def get_registered_models(self):
        return [SimpleNamespace(name=n) for n in self.models]

    def get_model_versions(self, name):
        return [mv for mv, _ in self.models[name].values()]


@pytest.fixture(params=["storage", "kubeflow"])
def registry(request, tmp_path):
    if request.param == "storage":
        return StorageRegistry(str(tmp_path / "registry"))
    return KubeflowModelRegistry("http://model-registry.kubeflow:8080", client=FakeModelRegistryClient())


@pytest.fixture
def artifact(tmp_path) -> str:
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights" * 1000)
    return str(path)


def test_register_get_list_latest_metrics(registry, artifact) -> None:
    first = registry.register(
        "seer-rg10b",
        "v1",
        artifact,
        metrics={"linear.top1": 0.75},
        artifacts={"report": "s3://b/report.html"},
        preset="rg10b",
        parent_run="run-123",
    )
    assert first.sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert first.created_at and first.artifact_uri == artifact
    second = registry.register("seer-rg10b", "v2", artifact, sha256="a" * 64, metrics={"linear.top1": 0.8})
    assert registry.get("seer-rg10b", "v1") == first
    assert [e.version for e in registry.list_versions("seer-rg10b")] == ["v1", "v2"]
    assert registry.latest("seer-rg10b") == second
    assert registry.list_models() == ["seer-rg10b"]
    assert registry.get_metrics("seer-rg10b", "v1") == {"linear.top1": 0.75}
    assert registry.get_metrics("seer-rg10b", "latest") == {"linear.top1": 0.8}
    got = registry.get("seer-rg10b", "v1")
    assert (
        got.preset == "rg10b"
        and got.parent_run == "run-123"
        and got.artifacts == {"report": "s3://b/report.html"}
    )


def test_reregistration_is_idempotent_and_conflicts_are_refused(registry, artifact, tmp_path) -> None:
    entry = registry.register("m", "1", artifact, metrics={"a": 1.0})
    again = registry.register("m", "1", artifact, metrics={"a": 2.0})
    assert again == entry  # same content: the existing entry, untouched
    other = tmp_path / "other.pt"
    other.write_bytes(b"different")
    with pytest.raises(
        RegistryConflictError, match=r"already registered with sha256 .*register under a new version"
    ):
        registry.register("m", "1", str(other))
    assert len(registry.list_versions("m")) == 1


def test_missing_things_name_what_exists(registry, artifact) -> None:
    registry.register("m", "1", artifact)
    with pytest.raises(NotFoundError, match="model m has no version 9; registered versions: 1"):
        registry.get("m", "9")
    with pytest.raises(NotFoundError, match="no versions of model x are registered; known models: m"):
        registry.latest("x")
    assert registry.list_versions("x") == []
    with pytest.raises(ConfigError, match="model version 'a/b' is invalid"):
        registry.register("m", "a/b", artifact)
    with pytest.raises(NotFoundError, match="does not exist"):
        registry.register("m", "2", artifact + ".missing")


def test_storage_layout_and_index_recovery(tmp_path, artifact) -> None:
    root = tmp_path / "reg"
    reg = StorageRegistry(str(root))
    reg.register("m", "1", artifact)
    assert (root / "models/m/versions/1.json").exists()
    assert json.loads((root / "index.json").read_text()) == {"models": {"m": {"latest": "1", "versions": 1}}}
    # a crash after writing the entry but before the index: re-running the registration repairs it
    (root / "index.json").unlink()
    (root / "models/m/index.json").unlink()
    reg.register("m", "1", artifact)
    assert json.loads((root / "models/m/index.json").read_text())["versions"][0]["version"] == "1"
    assert (root / "index.json").exists()


def test_relative_local_paths_are_stored_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    entry = StorageRegistry("reg").register("m", "1", "ckpt.pt", artifacts={"report": "out/report.html"})
    assert entry.artifact_uri == str(tmp_path / "ckpt.pt")
    assert entry.artifacts == {"report": str(tmp_path / "out/report.html")}


def test_folder_artifacts_hash_their_listing(tmp_path) -> None:
    folder = tmp_path / "sliced"
    (folder / "t").mkdir(parents=True)
    (folder / "index.json").write_text("{}")
    (folder / "t" / "w.bin").write_bytes(b"123")
    h = artifact_sha256(str(folder))
    (folder / "t" / "w.bin").write_bytes(b"124")
    assert artifact_sha256(str(folder)) != h


def test_storage_registry_on_s3(s3_bucket) -> None:
    """The same registry over real HTTP S3 (the moto server fixture in conftest.py)."""
    s3_root = f"s3://{s3_bucket}"
    storage.write_bytes(f"{s3_root}/ckpt/model.pt", b"abc")
    reg = StorageRegistry(f"{s3_root}/registry")
    entry = reg.register("m", "1", f"{s3_root}/ckpt/model.pt", metrics={"knn.top1": 0.5})
    assert entry.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert reg.list_models() == ["m"] and reg.latest("m") == entry


def test_kubeflow_metadata_is_scalar_and_reregistration_does_not_call_the_server(artifact) -> None:
    client = FakeModelRegistryClient()
    reg = KubeflowModelRegistry("http://mr:8080", client=client)
    reg.register("m", "1", artifact, metrics={"x": 1.0}, artifacts={"report": "s3://r"})
    reg.register("m", "1", artifact)
    assert client.register_calls == 1
    props = client.models["m"]["1"][0].custom_properties
    assert props["metric.x"] == 1.0 and props["artifact.report"] == "s3://r" and len(props["sha256"]) == 64


def test_open_registry_picks_the_backend(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SEER_MODEL_REGISTRY_URL", raising=False)
    monkeypatch.delenv("SEER_REGISTRY_URI", raising=False)
    with pytest.raises(ConfigError, match="no model registry configured"):
        open_registry()
    monkeypatch.setenv("SEER_REGISTRY_URI", str(tmp_path))
    assert isinstance(open_registry(), StorageRegistry)
    try:
        import model_registry  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'seer-kubeflow\[registry\]'"):
            open_registry("http://model-registry:8080")


def test_flatten_metrics() -> None:
    assert flatten_metrics({"linear": {"top1": 78, "name": "x"}, "knn": 0.5, "ok": True}) == {
        "linear.top1": 78.0,
        "knn": 0.5,
    }


def test_cli_register_list_show(tmp_path, artifact, capsys) -> None:
    reg = str(tmp_path / "reg")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"linear": {"top1": 0.7}}))
    args = ["register", "--name", "m", "--version", "1", "--artifact", artifact, "--registry", reg]
    assert main([*args, "--metrics", str(metrics), "--metric", "knn.top1=0.6", "--preset", "rg-tiny"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["metrics"] == {"linear.top1": 0.7, "knn.top1": 0.6}
    assert entry["artifacts"] == {"metrics": str(metrics)}
    assert main(["registry", "list", "--registry", reg]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("m\t1\t") and "knn.top1=0.6 linear.top1=0.7" in line
    assert main(["registry", "show", "m", "--registry", reg]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1"
    assert main([*args, "--metric", "top1=high"]) == 2
    assert "is not NAME=NUMBER" in capsys.readouterr().err
