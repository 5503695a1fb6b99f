"""`seer shard`: every valid image exactly once, rejects counted by reason, deterministic, resumable."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seer import storage
from seer.cli import main
from seer.data.shard import ShardSettings, iter_records, shard
from seer.data.synthetic import generate_corpus, generate_nasty_corpus
from seer.errors import ConfigError, NotFoundError
from tests.kill import sigkill_once_exists

REPO = Path(__file__).resolve().parents[1]


def read_shards(output: str, manifest: dict) -> list[tuple[str, dict, bytes]]:
    """(shard name, sidecar, jpeg) for every sample, checking each tar against its manifest entry."""
    import hashlib

    samples = []
    for entry in manifest["shards"]:
        data = storage.read_bytes(storage.join(output, entry["name"]))
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
        assert len(members) == entry["samples"]
        for key, parts in members.items():
            meta = json.loads(parts["json"])
            assert meta["key"] == key
            samples.append((entry["name"], meta, parts["jpg"]))
    return samples


def upload_folder(folder: Path, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        storage.put(path, storage.join(prefix, path.name))


def test_nasty_corpus_every_valid_image_once_and_rejects_counted(tmp_path: Path, storage_root: str) -> None:
    cases = generate_nasty_corpus(tmp_path / "nasty")
    source = storage.join(storage_root, "in")
    upload_folder(tmp_path / "nasty", source)
    output = storage.join(storage_root, "shards")
    manifest = shard([source], output, ShardSettings(max_samples_per_shard=4), workers=2, log=lambda _: None)

    assert storage.read_json(storage.join(output, "manifest.json")) == manifest
    kept = {name for name, c in cases.items() if c.outcome in ("valid", "converted")}
    rejected = {name: c.reason for name, c in cases.items() if c.outcome == "rejected"}
    totals = manifest["totals"]
    assert totals["inputs"] == len(cases) - 1  # notes.txt is not an image name: ignored
    assert totals["ignored"] == 1
    assert totals["inputs"] == totals["samples"] + totals["rejected"] + totals["duplicates"]
    assert totals["samples"] == len(kept) == sum(s["samples"] for s in manifest["shards"])
    assert totals["shards"] == len(manifest["shards"]) == -(-len(kept) // 4)
    assert totals["bytes"] == sum(s["bytes"] for s in manifest["shards"])
    assert manifest["rejected_by_reason"] == dict(Counter(rejected.values()))
    manifest_uri = storage.join(output, "manifest.json")
    records = {kind: list(iter_records(manifest_uri, kind)) for kind in ("rejected", "duplicates")}
    assert {r["source"].rsplit("/", 1)[1]: r["reason"] for r in records["rejected"]} == rejected
    assert [
        (d["source"].rsplit("/", 1)[1], d["duplicate_of"].rsplit("/", 1)[1]) for d in records["duplicates"]
    ] == [("zz_copy_of_ok.jpg", "ok.jpg")]
    assert "rejected" not in manifest and "duplicates" not in manifest  # per-sample records stay out
    assert manifest["encoded"] == {"passed_through": 1, "reencoded": 10}  # ok.jpg: baseline RGB JPEG
    assert manifest["converted_by_kind"]["alpha_over_white"] == 3
    assert manifest["settings"]["max_samples_per_shard"] == 4 and manifest["seer_version"]

    samples = read_shards(output, manifest)
    names = Counter(meta["source"].rsplit("/", 1)[1] for _, meta, _ in samples)
    assert names == Counter(kept)  # each kept image exactly once
    assert len({meta["sha256"] for _, meta, _ in samples}) == len(samples)
    for _, meta, jpeg in samples:
        name = meta["source"].rsplit("/", 1)[1]
        decoded = Image.open(io.BytesIO(jpeg))
        assert decoded.format == "JPEG" and decoded.mode == "RGB"
        assert decoded.size == cases[name].output_size == tuple(meta["size"])
        if cases[name].outcome == "valid":  # same picture as the source, up to JPEG loss
            original = np.asarray(Image.open(tmp_path / "nasty" / name).convert("RGB"), dtype=np.float32)
            pixels = np.asarray(decoded, dtype=np.float32)
            assert np.abs(pixels.mean((0, 1)) - original.mean((0, 1))).max() < 3, name
            assert np.corrcoef(pixels.ravel(), original.ravel())[0, 1] > 0.9, name
        if cases[name].probe:
            (x, y), expected = cases[name].probe
            assert max(abs(a - b) for a, b in zip(decoded.getpixel((x, y)), expected, strict=True)) <= 12


def test_lists_tars_and_unreadable_entries(tmp_path: Path) -> None:
    paths = generate_corpus(tmp_path / "imgs", 6, seed=1, max_size=64)
    with tarfile.open(tmp_path / "pack.tar", "w") as tar:
        for path in paths[:3]:
            tar.add(path, arcname=f"inner/{path.name}")
        tar.addfile(tarfile.TarInfo("inner/readme.md"), io.BytesIO(b""))
    (tmp_path / "list.txt").write_text(
        f"# comment\nimgs/{paths[3].parent.name}/{paths[3].name}\n{paths[4]}\nimgs/missing.jpg\npack.tar\n"
    )
    (tmp_path / "list.csv").write_text(f"label,path\ncat,{paths[5]}\n")
    manifest = shard(
        [str(tmp_path / "list.txt"), str(tmp_path / "list.csv")],
        str(tmp_path / "out"),
        workers=1,
        log=lambda _: None,
    )
    samples = read_shards(str(tmp_path / "out"), manifest)
    sources = [meta["source"] for _, meta, _ in samples]
    assert sources == [str(paths[3]), str(paths[4])] + [
        f"{tmp_path / 'pack.tar'}#inner/{p.name}" for p in paths[:3]
    ] + [str(paths[5])]
    assert manifest["rejected_by_reason"] == {"unreadable": 1}
    rejected = list(iter_records(str(tmp_path / "out" / "manifest.json"), "rejected"))
    assert len(rejected) == 1 and rejected[0]["source"].endswith("imgs/missing.jpg")
    assert manifest["totals"]["ignored"] == 1


def test_same_command_same_shards_and_size_limit(tmp_path: Path) -> None:
    generate_corpus(tmp_path / "in", 16, seed=2, min_size=64, max_size=200)
    settings = ShardSettings(shard_size_mb=0.03, max_short_side=96, quality=80)
    first = shard([str(tmp_path / "in")], str(tmp_path / "a"), settings, workers=2, log=lambda _: None)
    second = shard([str(tmp_path / "in")], str(tmp_path / "b"), settings, workers=1, log=lambda _: None)
    assert first["shards"] == second["shards"] and len(first["shards"]) > 2
    assert all(s["bytes"] <= 0.03 * (1 << 20) + 10240 for s in first["shards"])
    for _, meta, _ in read_shards(str(tmp_path / "a"), first):
        assert min(meta["size"]) <= 96
    again = shard([str(tmp_path / "in")], str(tmp_path / "a"), settings, workers=1, log=lambda _: None)
    assert again == first  # complete: nothing redone
    with pytest.raises(ConfigError, match="--overwrite"):
        shard(
            [str(tmp_path / "in")],
            str(tmp_path / "a"),
            ShardSettings(quality=50),
            workers=1,
            log=lambda _: None,
        )
    replaced = shard(
        [str(tmp_path / "in")],
        str(tmp_path / "a"),
        ShardSettings(),
        workers=1,
        overwrite=True,
        log=lambda _: None,
    )
    assert [s["name"] for s in replaced["shards"]] == ["shard-000000.tar"]
    assert sorted(p.name for p in (tmp_path / "a").glob("shard-*.tar")) == ["shard-000000.tar"]


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NotFoundError, match="neither a file nor a non-empty folder"):
        shard([str(tmp_path / "nope")], str(tmp_path / "out"), workers=1)
    with pytest.raises(ConfigError, match="--quality"):
        shard([str(tmp_path)], str(tmp_path / "out"), ShardSettings(quality=0))
    assert main(["shard", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seer shard: error:") and "check the path" in err


def test_cli_records_command(tmp_path: Path) -> None:
    generate_nasty_corpus(tmp_path / "in")
    argv = ["shard", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--workers", "1", "--no-dedup"]
    assert main(argv) == 0
    manifest = storage.read_json(str(tmp_path / "out" / "manifest.json"))
    assert manifest["settings"]["dedup"] is False and manifest["totals"]["duplicates"] == 0
    assert manifest["command"] == sys.argv  # the process's own command line, as typed


def test_cli_settings_flags_default_to_shard_settings_and_turn_booleans_off(tmp_path: Path) -> None:
    """`seer shard` takes every ShardSettings field from a flag whose default is the field's, and the
    --no-… flags switch dedup, the JSON sidecars and pass-through off (what the manifest records)."""
    import dataclasses

    from seer.cli import build_parser

    def settings(*flags: str) -> dict:
        args = build_parser().parse_args(["shard", "in", "--output", str(tmp_path), *flags])
        return {f.name: getattr(args, f.name) for f in dataclasses.fields(ShardSettings)}

    assert settings() == dataclasses.asdict(ShardSettings())
    changed = settings(
        "--no-dedup", "--no-json", "--no-pass-through", "--quality", "80", "--shard-size-mb", "0.5"
    )
    assert changed == {
        **dataclasses.asdict(ShardSettings()),
        "dedup": False,
        "write_json": False,
        "pass_through": False,
        "quality": 80,
        "shard_size_mb": 0.5,
    }


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_shard_set(tmp_path: Path) -> None:
    generate_corpus(tmp_path / "in", 160, seed=5, min_size=96, max_size=256)
    args = [str(tmp_path / "in"), "--max-samples-per-shard", "4", "--workers", "2"]
    reference = shard(
        [str(tmp_path / "in")], str(tmp_path / "ref"), ShardSettings(max_samples_per_shard=4), workers=1,
        log=lambda _: None,
    )  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "seer", "shard", *args, "--output", str(out)]
    sigkill_once_exists(cmd, out / "_parts" / "shard-000000.json", cwd=REPO)  # one shard committed

    assert not (out / "manifest.json").exists()
    parts = sorted((out / "_parts").glob("*.json"))
    assert 1 <= len(parts) < len(reference["shards"])
    for part in parts:  # whatever looks complete is complete and matches the uninterrupted run
        entry = json.loads(part.read_text())["shard"]
        assert entry in reference["shards"]
    # A write cut off by the kill stays under a hidden temp name that listings never show.
    visible = [info.uri.rsplit("/", 1)[1] for info in storage.list(str(out))]
    assert all(name.startswith("shard-") or name.endswith(".json") for name in visible)

    messages: list[str] = []
    shard(
        [str(tmp_path / "in")],
        str(out),
        ShardSettings(max_samples_per_shard=4),
        workers=2,
        log=messages.append,
    )  # the same command again (in-process, to spare a second interpreter start-up)
    assert (
        messages[0] == f"resuming: {len(parts)} complete shards cover inputs 0..{4 * len(parts) - 1} of 160"
    )
    resumed = storage.read_json(str(out / "manifest.json"))
    assert resumed["shards"] == reference["shards"]
    assert resumed["totals"] == reference["totals"]
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [s["name"] for s in reference["shards"]]
