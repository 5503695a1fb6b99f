"""images/: Dockerfiles build from files that exist, call entry points the package installs, pin their
bases, run as the non-root uid the PyTorchJob pods demand; `make images` explains a missing Docker."""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from seer.launch.pytorchjob import render_pytorchjob

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_both_images_exist() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["component", "trainer"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned_by_tag(dockerfile: Path) -> None:
    bases = [args.split()[0] for word, args in instructions(dockerfile) if word == "FROM"]
    assert bases
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), f"{base} is not pinned by tag"
        assert re.search(r"\d", tag), f"{base}: pin a versioned tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copied_file_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    ignored = dockerignore()
    copies = [shlex.split(args) for word, args in instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.parent.name}: COPY {src} does not exist"
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), (
                f"{src} is excluded by .dockerignore"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_entrypoints_are_installed_by_the_package(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    (entry,) = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    if entry[0] == "seer":
        (script,) = metadata.entry_points(group="console_scripts", name="seer")
        assert script.dist.name == "seer-kubeflow"
        module, _, func = script.value.partition(":")
        assert callable(getattr(importlib.import_module(module), func))
    else:
        assert entry[:3] == ["python", "-m", "seer"]
        assert (ROOT / "seer" / "__main__.py").exists()
    assert any(
        word == "RUN" and re.search(r"pip install \.|pip install \"\.\[", args) for word, args in steps
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_run_as_the_uid_the_pods_require(dockerfile: Path) -> None:
    users = [args for word, args in instructions(dockerfile) if word == "USER"]
    assert users, "images must not run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    job = render_pytorchjob("seer-x", "rg10b", image="r.example.com/t:1", output_uri="s3://b/r")
    pod_uid = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert uid == str(pod_uid)


def test_trainer_has_the_pinned_torch_and_the_metrics_port() -> None:
    steps = instructions(ROOT / "images/trainer/Dockerfile")
    torch_pin = next(d for d in metadata.requires("seer-kubeflow") if d.startswith("torch=="))
    assert any(word == "RUN" and torch_pin in args for word, args in steps)
    assert ("EXPOSE", "9090") in steps


def test_make_images_explains_missing_docker() -> None:
    for docker, message in [
        ("no-such-docker", "not found: install Docker"),
        ("false", "cannot reach the Docker daemon"),
    ]:
        proc = subprocess.run(
            ["make", "-s", "-C", str(ROOT), "images", f"DOCKER={docker}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and message in proc.stderr
