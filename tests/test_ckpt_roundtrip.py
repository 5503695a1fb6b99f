"""DCP training checkpoint → consolidated → sliced → loaded model, bit-exact; and every failure mode
(wrong preset, truncated file, flipped byte, missing slice, crash mid-slice) gives a one-line error
and leaves nothing that looks complete."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import seer.storage as storage
from seer.checkpoints import slice as slice_mod
from seer.checkpoints.consolidate import consolidate, open_consolidated, verify_consolidated
from seer.checkpoints.io import CheckpointError
from seer.checkpoints.load_sliced import load_sliced_into_
from seer.checkpoints.mapping import ArchitectureMismatchError
from seer.checkpoints.slice import (
    CorruptSliceError,
    open_sliced,
    read_slice,
    slice_checkpoint,
    verify_sliced,
)
from seer.cli import main
from seer.models.regnet import build_trunk
from seer.models.swav_model import build_swav_model

PRESET = "rg-tiny"


def trained_model(seed: int = 0) -> torch.nn.Module:
    """A tiny SwAV model after one SGD step (weights and BN statistics differ from init)."""
    torch.manual_seed(seed)
    model = build_swav_model(PRESET, "cpu", seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    emb, scores = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    (emb.sum() + sum(s.sum() for s in scores)).backward()
    opt.step()
    return model


def write_dcp(
    model: torch.nn.Module, folder: Path, iteration: int = 7, model_config: dict | None = None
) -> None:
    """A checkpoint in the training engine's layout (DCP files + seer_checkpoint.json last)."""
    state = {"model": model.state_dict(), "extra": {"iteration": iteration}}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    manifest = {
        "iteration": iteration,
        "preset": PRESET,
        "config": {"model": model_config or {"preset": PRESET}},
        "world_size": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "format": "seer-dcp-v1",
    }
    (folder / "seer_checkpoint.json").write_text(json.dumps(manifest))


def upload_dir(local: Path, uri: str) -> str:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.put(path, storage.join(uri, str(path.relative_to(local))))
    return uri


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def _trained(tmp_path_factory):
    model = trained_model()
    folder = tmp_path_factory.mktemp("ckpt") / "iter-00000007"
    write_dcp(model, folder)
    return model, folder


@pytest.fixture
def model_and_ckpt(_trained, tmp_path):
    """The trained model and a private copy of its DCP checkpoint (tests may damage it)."""
    model, folder = _trained
    copy = tmp_path / "run" / "checkpoints" / folder.name
    shutil.copytree(folder, copy)
    return model, copy


def test_roundtrip_bit_exact_through_both_slice_layouts(model_and_ckpt, storage_root, monkeypatch):
    model, folder = model_and_ckpt
    monkeypatch.setattr(slice_mod, "_WHOLE_OBJECT_MAX", 16 << 10)  # bigger remote slices: ranged reads
    ckpt = (
        str(folder)
        if storage.local_path(storage_root)
        else upload_dir(folder, storage.join(storage_root, "ck"))
    )
    out = storage.join(storage_root, "model.pt")
    side = consolidate(ckpt, out)
    assert side["preset"] == PRESET and side["iteration"] == 7 and side["config"]["model"]["preset"] == PRESET
    assert storage.read_json(out + ".json")["sha256"] == side["sha256"]
    verify_consolidated(out)

    seer_index = slice_checkpoint(out, storage.join(storage_root, "sliced"))
    assert open_sliced(seer_index).preset == PRESET
    indexes = [seer_index]
    if storage.local_path(storage_root):  # VISSL's layout stores absolute paths: local folders only
        indexes.append(slice_checkpoint(out, storage.join(storage_root, "vissl", "m.torch"), layout="vissl"))
    for index in indexes:
        fresh = build_swav_model(PRESET, "cpu", seed=123)
        assert not same_state(fresh, model)
        load_sliced_into_(fresh, index)
        assert same_state(fresh, model)
    trunk = build_trunk(PRESET, "cpu", seed=5)
    load_sliced_into_(trunk, seer_index)
    assert all(torch.equal(v, model.trunk.state_dict()[k]) for k, v in trunk.state_dict().items())


def test_consolidated_file_loads_with_mmap_and_drops_optimizer_state(model_and_ckpt, tmp_path):
    model, folder = model_and_ckpt
    out = tmp_path / "c.pt"
    consolidate(str(folder), str(out))
    loaded = torch.load(out, mmap=True, weights_only=True)
    assert loaded["format"] == "seer-consolidated-v1" and loaded["preset"] == PRESET
    assert zipfile.ZipFile(out).testzip() is None  # every record's crc32 matches its bytes
    assert set(loaded) == {"format", "preset", "iteration", "config", "trunk", "heads"}
    assert all(torch.equal(v, model.trunk.state_dict()[k]) for k, v in loaded["trunk"].items())
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in loaded["heads"].items())
    assert "prototypes.0.weight" in loaded["heads"]


def test_sliced_folder_can_move(model_and_ckpt, tmp_path):
    model, folder = model_and_ckpt
    consolidate(str(folder), str(tmp_path / "c.pt"))
    slice_checkpoint(str(tmp_path / "c.pt"), str(tmp_path / "a"))
    assert all(zipfile.ZipFile(p).testzip() is None for p in (tmp_path / "a" / "tensors").iterdir())
    (tmp_path / "a").rename(tmp_path / "b")
    fresh = build_swav_model(PRESET, "cpu", seed=9)
    load_sliced_into_(fresh, str(tmp_path / "b"))
    assert same_state(fresh, model)


def test_wrong_preset_is_one_line_error(model_and_ckpt, tmp_path):
    _, folder = model_and_ckpt
    with pytest.raises(CheckpointError, match="trained with preset 'rg-tiny', not 'rg-small'"):
        consolidate(str(folder), str(tmp_path / "c.pt"), preset="rg-small")
    assert not (tmp_path / "c.pt").exists()
    consolidate(str(folder), str(tmp_path / "c.pt"))
    with pytest.raises(CheckpointError, match="holds preset 'rg-tiny'"):
        open_consolidated(str(tmp_path / "c.pt"), preset="rg32gf")
    slice_checkpoint(str(tmp_path / "c.pt"), str(tmp_path / "s"))
    other = build_swav_model("rg-small", "meta")
    with pytest.raises(ArchitectureMismatchError, match="does not match the model") as err:
        load_sliced_into_(other, str(tmp_path / "s"))
    assert "\n" not in str(err.value)


def test_checkpoint_for_another_architecture_fails_with_first_mismatches(tmp_path):
    model = build_swav_model("rg-small", "cpu")
    folder = tmp_path / "iter"
    write_dcp(model, folder)  # manifest claims rg-tiny, tensors are rg-small's
    with pytest.raises(ArchitectureMismatchError, match=r"shape mismatches.*checkpoint \[") as err:
        consolidate(str(folder), str(tmp_path / "c.pt"))
    assert "\n" not in str(err.value) and not (tmp_path / "c.pt").exists()


def test_run_with_overridden_prototype_count_consolidates(tmp_path):
    """`--set model.num_prototypes=[...]` changes the prototype matrix; consolidation follows the run's
    config instead of refusing the checkpoint as another architecture."""
    from seer.models.heads import SwAVHead
    from seer.models.presets import get_preset

    spec = get_preset(PRESET)
    model = build_swav_model(PRESET, "cpu")
    model.head = SwAVHead(spec.head_dims, spec.head_use_bn, [128])
    folder = tmp_path / "iter"
    write_dcp(model, folder, model_config={"preset": PRESET, "num_prototypes": [128]})
    consolidate(str(folder), str(tmp_path / "c.pt"))
    heads = torch.load(tmp_path / "c.pt", mmap=True, weights_only=True)["heads"]
    assert torch.equal(heads["prototypes.0.weight"], model.head.state_dict()["prototypes.0.weight"])
    slice_checkpoint(str(tmp_path / "c.pt"), str(tmp_path / "s"))
    assert tuple(read_slice(open_sliced(str(tmp_path / "s")).entries["head.prototypes.0.weight"]).shape) == (
        128,
        spec.head_dims[-1],
    )
    # Loading the slices into the preset's default head names the fix: the run's prototype counts.
    with pytest.raises(ArchitectureMismatchError, match=r"prototype counts.*model\.num_prototypes") as err:
        load_sliced_into_(build_swav_model(PRESET, "cpu"), str(tmp_path / "s"))
    assert "\n" not in str(err.value)
    load_sliced_into_(build_swav_model(PRESET, "cpu", num_prototypes=[128]), str(tmp_path / "s"))
    # Without the override in its config, the same tensors are a mismatch, named in one line.
    other = tmp_path / "iter2"
    write_dcp(model, other)
    with pytest.raises(ArchitectureMismatchError, match=r"prototypes\.0\.weight: checkpoint \[128, "):
        consolidate(str(other), str(tmp_path / "d.pt"))


def test_incomplete_training_checkpoint_is_rejected(model_and_ckpt, tmp_path):
    _, folder = model_and_ckpt
    (folder / "seer_checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match=r"no seer_checkpoint\.json"):
        consolidate(str(folder), str(tmp_path / "c.pt"))


def test_flipped_byte_and_missing_slice_name_tensor_and_file(model_and_ckpt, tmp_path):
    _, folder = model_and_ckpt
    consolidate(str(folder), str(tmp_path / "c.pt"))
    index = slice_checkpoint(str(tmp_path / "c.pt"), str(tmp_path / "s"))
    entries = json.loads(Path(index).read_text())["entries"]
    fqn = max(entries, key=lambda k: entries[k]["bytes"])
    path = tmp_path / "s" / entries[fqn]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    fresh = build_swav_model(PRESET, "cpu")
    with pytest.raises(CorruptSliceError, match="sha256") as err:
        load_sliced_into_(fresh, index)
    assert fqn in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CorruptSliceError, match=fqn):
        verify_sliced(index)
    path.unlink()
    with pytest.raises(CorruptSliceError, match=f"slice for {fqn} is missing"):
        load_sliced_into_(fresh, index)


def test_truncated_consolidated_file_is_detected_and_slicing_leaves_nothing(model_and_ckpt, tmp_path):
    _, folder = model_and_ckpt
    out = tmp_path / "c.pt"
    consolidate(str(folder), str(out))
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 200])
    with pytest.raises(CheckpointError, match="truncated"):
        verify_consolidated(str(out))
    with pytest.raises(CheckpointError, match=r"truncated|not a readable"):
        slice_checkpoint(str(out), str(tmp_path / "s"))
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").rglob("*.*"))


def test_crash_mid_slice_leaves_no_index_and_rerun_completes(model_and_ckpt, tmp_path, monkeypatch):
    model, folder = model_and_ckpt
    consolidate(str(folder), str(tmp_path / "c.pt"))
    out = tmp_path / "s"
    slice_checkpoint(str(tmp_path / "c.pt"), str(out))  # an earlier complete run
    real, calls = slice_mod._write_slice, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(slice_mod, "_write_slice", crashing)
    with pytest.raises(OSError, match="disk full"):
        slice_checkpoint(str(tmp_path / "c.pt"), str(out))
    assert not (out / "index.json").exists()
    assert not [p for p in out.rglob("*") if p.is_file()]
    with pytest.raises(CheckpointError, match="slicing did not finish"):
        open_sliced(str(out))
    monkeypatch.setattr(slice_mod, "_write_slice", real)
    slice_checkpoint(str(tmp_path / "c.pt"), str(out))
    fresh = build_swav_model(PRESET, "cpu", seed=3)
    load_sliced_into_(fresh, str(out))
    assert same_state(fresh, model)


def test_cli_commands_and_one_line_errors(model_and_ckpt, tmp_path, capsys):
    _, folder = model_and_ckpt
    out = str(tmp_path / "c.pt")
    assert main(["ckpt", "consolidate", str(folder), "--output", out]) == 0
    assert main(["ckpt", "slice", out, "--output", str(tmp_path / "s")]) == 0
    assert main(["ckpt", "verify", out]) == 0
    assert main(["ckpt", "verify", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["ckpt", "info", out]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == PRESET and info["tensors"]["heads"] > 0
    assert main(["ckpt", "info", str(tmp_path / "s")]) == 0
    assert (
        json.loads(capsys.readouterr().out)["slices"] == info["tensors"]["trunk"] + info["tensors"]["heads"]
    )
    assert main(["ckpt", "consolidate", str(folder), "--output", out, "--preset", "rg10b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seer ckpt: error:") and "rg10b" in err and "\n" not in err


def test_reading_one_shard_of_rows_still_checks_the_whole_slice(model_and_ckpt, tmp_path):
    model, folder = model_and_ckpt
    consolidate(str(folder), str(tmp_path / "c.pt"))
    index = open_sliced(slice_checkpoint(str(tmp_path / "c.pt"), str(tmp_path / "s")))
    fqn = "head.prototypes.0.weight"
    full = model.state_dict()[fqn]
    assert torch.equal(read_slice(index.entries[fqn], rows=(10, 40)), full[10:40])
    assert read_slice(index.entries[fqn], rows=(64, 64)).shape == (0, full.shape[1])
    path = Path(index.entries[fqn].uri)
    record = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("data/0"))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26 : record.header_offset + 30])
    row_60 = record.header_offset + 30 + name_len + extra_len + 60 * full.shape[1] * 4
    data[row_60] ^= 0x10  # a byte of row 60, outside the rows read
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSliceError, match="sha256"):
        read_slice(index.entries[fqn], rows=(0, 2))
