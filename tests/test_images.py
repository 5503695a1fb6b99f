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


def excluded(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context, as the Dockerfile reference's
    ".dockerignore file" section (moby patternmatcher) says: a pattern excludes a path when it matches
    the path or one of its parent folders, `!` makes an exception, and the last matching line decides.
    (fnmatch's `*` also crosses `/`, unlike Go's filepath.Match; none of our patterns depends on that.)"""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(fnmatch.fnmatch(p, pattern.lstrip("!").strip("/")) for p in prefixes):
            out = not negated
    return out


def test_excluded_follows_dockers_last_match_rule() -> None:
    patterns = ["images", "!images/common/add-user.sh", "**/*.pyc"]
    assert excluded("images/trainer/Dockerfile", patterns)
    assert not excluded("images/common/add-user.sh", patterns)
    assert excluded("seer/x/y.pyc", patterns) and not excluded("seer/x/y.py", patterns)
    assert excluded("images/common/add-user.sh", [*patterns, "images/common"])


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
            assert not excluded(src, ignored), f"{src} is excluded by .dockerignore"


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


# Users and groups with id 1000 in the base images' /etc/passwd and /etc/group. Ubuntu's container
# images ship a default `ubuntu` user (uid/gid 1000) since 23.04, so nvidia/cuda:*-ubuntu24.04 has it;
# Debian's python:*-slim images have no user above the system range.
BASE_USERS = {
    "nvidia/cuda:*-ubuntu24.04": {
        "passwd": ["ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash"],
        "group": ["ubuntu:x:1000:"],
    },
    "python:*-slim-bookworm": {"passwd": [], "group": []},
}
SYSTEM_USERS = {
    "passwd": ["root:x:0:0:root:/root:/bin/bash", "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin"],
    "group": ["root:x:0:", "nogroup:x:65534:"],
}

# Stand-ins for the shadow-utils commands and getent, with their exit codes and refusals (groupadd:
# 4 = GID not unique, 9 = name in use; useradd: 4 = UID not unique, 6 = group missing, 9 = name in use;
# userdel --remove also drops the user's own group, as Ubuntu's USERGROUPS_ENAB=yes does).
SHADOW_SHIM = r"""
import os, sys
root = os.environ["FAKE_ETC"]
def read(db):
    with open(f"{root}/{db}") as f:
        return [l.rstrip("\n").split(":") for l in f if l.strip()]
def write(db, rows):
    with open(f"{root}/{db}", "w") as f:
        f.writelines(":".join(r) + "\n" for r in rows)
cmd, args = sys.argv[1], sys.argv[2:]
def opt(name):
    return args[args.index(name) + 1] if name in args else None
name = args[-1] if args else ""
if cmd == "getent":
    rows = [r for r in read(args[0]) if args[1] in (r[0], r[2])]
    print("\n".join(":".join(r) for r in rows)) if rows else sys.exit(2)
elif cmd == "groupadd":
    groups = read("group")
    if any(g[0] == name for g in groups): sys.exit(9)
    if any(g[2] == opt("--gid") for g in groups):
        print(f"groupadd: GID '{opt('--gid')}' already exists", file=sys.stderr); sys.exit(4)
    write("group", groups + [[name, "x", opt("--gid"), ""]])
elif cmd == "useradd":
    users, groups = read("passwd"), read("group")
    if any(u[0] == name for u in users): sys.exit(9)
    if any(u[2] == opt("--uid") for u in users):
        print(f"useradd: UID {opt('--uid')} is not unique", file=sys.stderr); sys.exit(4)
    if not any(opt("--gid") in (g[0], g[2]) for g in groups):
        print(f"useradd: group '{opt('--gid')}' does not exist", file=sys.stderr); sys.exit(6)
    write("passwd", users + [[name, "x", opt("--uid"), opt("--gid"), "", f"/home/{name}", opt("--shell")]])
elif cmd == "userdel":
    users = read("passwd")
    user = next((u for u in users if u[0] == name), None)
    if user is None: sys.exit(6)
    write("passwd", [u for u in users if u[0] != name])
    write("group", [g for g in read("group") if not (g[0] == name and g[2] == user[3])])
elif cmd == "groupdel":
    groups = read("group")
    if not any(g[0] == name for g in groups): sys.exit(6)
    if any(u[3] == next(g[2] for g in groups if g[0] == name) for u in read("passwd")): sys.exit(8)
    write("group", [g for g in groups if g[0] != name])
"""


def _user_setup(dockerfile: Path) -> str:
    """The shell that creates the image's user: the script a RUN runs after COPYing it from the repo
    (images/common/add-user.sh), or a RUN that calls useradd itself."""
    steps = instructions(dockerfile)
    copied = {shlex.split(a)[-1]: ROOT / shlex.split(a)[0] for word, a in steps if word == "COPY"}
    scripts = []
    for word, args in steps:
        if word == "RUN":
            tokens = dict.fromkeys(shlex.split(args))  # a script named twice (run, then rm) runs once
            ran = [copied[t].read_text() for t in tokens if t in copied and copied[t].is_file()]
            scripts += [text for text in [args, *ran] if "useradd" in text]
    (script,) = scripts
    return script


def _run_user_setup(
    script: str, base_users: dict[str, list[str]], tmp_path: Path
) -> subprocess.CompletedProcess:
    import sys

    etc, bin_dir = tmp_path / "etc", tmp_path / "bin"
    etc.mkdir()
    bin_dir.mkdir()
    for db in ("passwd", "group"):
        (etc / db).write_text("".join(f"{row}\n" for row in SYSTEM_USERS[db] + base_users[db]))
    shim = bin_dir / "shim.py"
    shim.write_text(SHADOW_SHIM)
    for cmd in ("getent", "groupadd", "useradd", "userdel", "groupdel"):
        (bin_dir / cmd).write_text(f'#!/bin/sh\nexec {sys.executable} {shim} {cmd} "$@"\n')
        (bin_dir / cmd).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_ETC": str(etc)}
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_user_setup_works_on_a_base_that_already_has_uid_1000(dockerfile: Path, tmp_path: Path) -> None:
    """Build-free lint: the Dockerfile's user-setup RUN runs against the base image's known users with
    stand-in shadow-utils. On nvidia/cuda:*-ubuntu24.04 (user/group ubuntu = 1000) a bare
    `groupadd --gid 1000 seer` exits 4 and `make images` stopped; the setup must leave seer as 1000:1000."""
    (base,) = [args.split()[0] for word, args in instructions(dockerfile) if word == "FROM"]
    (users,) = [u for pattern, u in BASE_USERS.items() if fnmatch.fnmatch(base, pattern)]
    result = _run_user_setup(_user_setup(dockerfile), users, tmp_path)
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert "seer:x:1000:1000:" in passwd and passwd.count(":1000:") == 1
    assert "seer:x:1000:" in (tmp_path / "etc" / "group").read_text()


def test_the_shims_refuse_what_the_real_groupadd_refuses(tmp_path: Path) -> None:
    """The old one-liner fails on the Ubuntu 24.04 base, as `docker build` did (GID '1000' already exists)."""
    old = "groupadd --gid 1000 seer && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin seer"
    result = _run_user_setup(old, BASE_USERS["nvidia/cuda:*-ubuntu24.04"], tmp_path)
    assert result.returncode == 4 and "GID '1000' already exists" in result.stderr


def test_component_image_installs_the_model_registry_client() -> None:
    """http(s) `registry` values need the model-registry package (seer/registry.py); the component image
    must install the extra that brings it."""
    text = (ROOT / "pyproject.toml").read_text()
    extras = [m.group(1) for m in re.finditer(r'^(\w[\w-]*) = \[[^\]]*"model-registry==', text, re.M)]
    assert extras
    installs = [args for word, args in instructions(ROOT / "images/component/Dockerfile") if word == "RUN"]
    (pip,) = [a for a in installs if re.search(r'pip install "\.\[', a)]
    wanted = re.search(r'"\.\[([^\]]*)\]"', pip).group(1).split(",")
    assert "kfp" in wanted and any(e in wanted for e in extras)


def test_efa_image_and_check_agree(tmp_path: Path, monkeypatch) -> None:
    """network=efa: the pods run `seer launch check-network efa` before training; it fails naming the
    fix without aws-ofi-nccl/libfabric and passes where the trainer image's EFA build puts them."""
    from seer.cli import main
    from seer.launch.network import EFA_LIB_DIRS, check_efa

    job = render_pytorchjob(
        "seer-x", "rg10b", image="r.example.com/t:1", output_uri="s3://b/r", network="efa", network_devices=4
    )
    (init,) = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["initContainers"]
    assert (
        init["command"] == ["seer", "launch", "check-network", "efa"] and init["image"] == "r.example.com/t:1"
    )
    env = [args for word, args in instructions(ROOT / "images/trainer/Dockerfile") if word == "ENV"]
    ld = next(a for a in env if a.startswith("LD_LIBRARY_PATH="))
    assert {"/opt/amazon/ofi-nccl/lib", "/opt/amazon/efa/lib"} <= set(ld.split("=", 1)[1].split(":"))
    assert {"/opt/amazon/ofi-nccl/lib", "/opt/amazon/efa/lib"} <= set(EFA_LIB_DIRS)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    if not any(Path(d).exists() for d in EFA_LIB_DIRS):
        assert main(["launch", "check-network", "efa"]) != 0
    (tmp_path / "libnccl-net-ofi.so").write_bytes(b"")
    (tmp_path / "libfabric.so.1").write_bytes(b"")
    assert check_efa({"LD_LIBRARY_PATH": str(tmp_path)}) == [
        tmp_path / "libnccl-net-ofi.so",
        tmp_path / "libfabric.so.1",
    ]
    assert main(["launch", "check-network", "efa"]) == 0
