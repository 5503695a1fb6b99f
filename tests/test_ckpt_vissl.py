"""VISSL interop: checkpoints built here from the key patterns in seer_spec §1.6/§4 (FSDP wrapper names,
10B `-part` groups, BN head indices, fairscale shard_list + shard files) import into seer models
bit-exactly, and exports read back."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seer.checkpoints.consolidate import consolidated_tensors, open_consolidated
from seer.checkpoints.io import CheckpointError
from seer.checkpoints.load_sliced import load_sliced_into_
from seer.checkpoints.mapping import ArchitectureMismatchError, UnknownKeyError, vissl_to_seer_trunk
from seer.checkpoints.slice import slice_checkpoint
from seer.checkpoints.vissl import export_vissl, import_vissl
from seer.models.swav_model import build_swav_model

PRESET = "rg-tiny"

# seer (torchvision) block tensor prefix → VISSL/Classy name (spec §1.4/§1.6), written out by hand.
VISSL_BLOCK = {
    "f.a.0": "f.a.0",
    "f.a.1": "f.a.1",
    "f.b.0": "f.b.0",
    "f.b.1": "f.b.1",
    "f.se.fc1": "f.se.excitation.0",
    "f.se.fc2": "f.se.excitation.2",
    "f.c.0": "f.c",
    "f.c.1": "f.final_bn",
    "proj.0": "proj",
    "proj.1": "bn",
}


def vissl_trunk_key(name: str, parts: bool, wrappers: bool) -> str:
    if name.startswith("stem."):
        key = f"_feature_blocks.conv1.{name}"
    else:
        stage, block, rest = re.fullmatch(r"trunk_output\.block(\d)\.block\d-(\d+)\.(.+)", name).groups()
        head, param = rest.rsplit(".", 1)
        part = f"block{stage}-part{int(block) // 2}." if parts else ""
        key = f"_feature_blocks.res{int(stage) + 1}.{part}block{stage}-{block}.{VISSL_BLOCK[head]}.{param}"
    if wrappers:  # fairscale FSDP nesting as VISSL's regnet_fsdp saves it
        key = "_fsdp_wrapped_module." + key.replace(".block", "._fsdp_wrapped_module._fpw_module.block", 1)
    return key


def vissl_head_key(name: str) -> str:
    m = re.fullmatch(r"prototypes\.(\d+)\.weight", name)
    return f"0.prototypes{m[1]}.weight" if m else f"0.{name}"


def randomized_model(seed: int = 0) -> torch.nn.Module:
    model = build_swav_model(PRESET, "cpu", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return model


def vissl_checkpoint(model: torch.nn.Module, parts: bool, wrappers: bool) -> dict:
    trunk = {vissl_trunk_key(k, parts, wrappers): v for k, v in model.trunk.state_dict().items()}
    heads = {vissl_head_key(k): v for k, v in model.head.state_dict().items()}
    return {
        "classy_state_dict": {
            "base_model": {"model": {"trunk": trunk, "heads": heads}},
            "loss": {"queue": torch.zeros(2)},
            "train_phase_idx": 0,
        },
        "phase_idx": 0,
        "iteration": 124500,
        "iteration_num": 124500,
    }


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def load_consolidated(model: torch.nn.Module, uri: str) -> None:
    loaded = torch.load(uri, mmap=True, weights_only=True)
    model.trunk.load_state_dict(loaded["trunk"])
    model.head.load_state_dict(loaded["heads"])


@pytest.mark.parametrize(("parts", "wrappers"), [(False, False), (True, True)])
def test_import_vissl_consolidated(tmp_path, parts, wrappers):
    model = randomized_model()
    torch.save(vissl_checkpoint(model, parts, wrappers), tmp_path / "model_iteration124500_conso.torch")
    side = assert_imports_as(model, tmp_path / "model_iteration124500_conso.torch", tmp_path / "m.pt", seed=7)
    assert side["iteration"] == 124500 and side["preset"] == PRESET


def assert_imports_as(model: torch.nn.Module, source: str | Path, target: Path, seed: int) -> dict:
    """`source` (VISSL) imported to `target` loads into a fresh model (built with `seed`) as `model`."""
    side = import_vissl(str(source), str(target), PRESET)
    fresh = build_swav_model(PRESET, "cpu", seed=seed)
    load_consolidated(fresh, str(target))
    assert same_state(fresh, model)
    return side


def test_export_vissl_with_10b_parts_reimports_and_uses_vissl_names(tmp_path):
    model = randomized_model(1)
    torch.save(vissl_checkpoint(model, False, False), tmp_path / "in.torch")
    import_vissl(str(tmp_path / "in.torch"), str(tmp_path / "m.pt"), PRESET)
    export_vissl(str(tmp_path / "m.pt"), str(tmp_path / "out.torch"), with_parts=True)
    exported = torch.load(tmp_path / "out.torch", weights_only=True)
    assert exported["type"] == "consolidated" and exported["iteration"] == 124500
    trunk = exported["classy_state_dict"]["base_model"]["model"]["trunk"]
    heads = exported["classy_state_dict"]["base_model"]["model"]["heads"]
    assert "_feature_blocks.conv1.stem.0.weight" in trunk
    assert "_feature_blocks.res2.block1-part0.block1-0.f.se.excitation.0.weight" in trunk
    assert "_feature_blocks.res5.block4-part0.block4-0.f.final_bn.running_var" in trunk
    assert {"0.prototypes0.weight", "0.projection_head.1.running_mean", "0.projection_head.3.bias"} <= set(
        heads
    )
    assert_imports_as(model, tmp_path / "out.torch", tmp_path / "again.pt", seed=2)


def test_vissl_slice_list_written_by_us_reads_back_into_model_and_import(tmp_path):
    model = randomized_model(2)
    torch.save(vissl_checkpoint(model, True, True), tmp_path / "in.torch")
    import_vissl(str(tmp_path / "in.torch"), str(tmp_path / "m.pt"), PRESET)
    index = slice_checkpoint(str(tmp_path / "m.pt"), str(tmp_path / "sliced" / "model.torch"), layout="vissl")
    listing = torch.load(index, weights_only=True)
    assert listing["type"] == "slice_list"
    paths = listing["classy_state_dict"]["base_model"]["model"]["trunk"]
    key = "_feature_blocks.res3.block2-0.f.c.weight"
    assert paths[key].startswith("/") and paths[key].endswith(".torch")
    assert torch.load(paths[key], weights_only=True)["type"] == "slice"
    fresh = build_swav_model(PRESET, "cpu", seed=3)
    load_sliced_into_(fresh, index)
    assert same_state(fresh, model)
    assert_imports_as(model, index, tmp_path / "from_slices.pt", seed=4)


def _fairscale_shards(named: dict[str, torch.Tensor], buffers: set[str], units: list[str], world: int):
    """Per-rank (weights, metadata) in fairscale FSDP's `local_state_dict` / `local_metadata_dict` form:
    each FSDP unit (module path) flattens the parameters it owns into `flat_param_0`, padded to a
    multiple of the world size and split evenly; buffers are replicated."""
    owner: dict[str, list[str]] = {u: [] for u in units}
    for name in named:
        if name not in buffers:
            unit = max((u for u in units if u == "" or name.startswith(u + ".")), key=len)
            owner[unit].append(name)
    weights: list[dict] = [{} for _ in range(world)]
    metas: list[dict] = [{"param_metadata": [], "buffer_names": sorted(buffers)} for _ in range(world)]
    for unit, names in owner.items():
        if not names:
            continue
        rel = [n[len(unit) + 1 :] if unit else n for n in names]
        flat = torch.cat([named[n].reshape(-1) for n in names])
        pad = (-flat.numel()) % world
        chunks = torch.cat([flat, flat.new_zeros(pad)]).chunk(world)
        for rank in range(world):
            weights[rank][f"{unit}.flat_param_0" if unit else "flat_param_0"] = chunks[rank].clone()
            metas[rank]["param_metadata"].append(
                {
                    "fsdp_path": unit,
                    "params": {
                        "flat_param_0": {
                            "names": rel,
                            "shapes": [named[n].shape for n in names],
                            "numels": [named[n].numel() for n in names],
                            "padding": pad if rank == world - 1 else 0,
                        }
                    },
                    "no_broadcast_optim_state": False,
                    "shared_param_info": [],
                }
            )
    for rank in range(world):
        weights[rank].update({b: named[b] for b in buffers})
    return weights, metas


def test_import_fairscale_sharded_vissl_checkpoint(tmp_path):
    model = randomized_model(3)
    world = 2
    trunk = {vissl_trunk_key(k, False, False): v for k, v in model.trunk.state_dict().items()}
    heads = {vissl_head_key(k): v for k, v in model.head.state_dict().items()}
    trunk_units = [
        "",
        *sorted({re.match(r"(_feature_blocks\.res\d\.block\d-\d+)", k)[1] for k in trunk if "res" in k}),
    ]
    head_units = ["", "0.prototypes0"]
    bufs = {
        k
        for k in {**trunk, **heads}
        if k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
    }
    tw, tm = _fairscale_shards(trunk, bufs & set(trunk), trunk_units, world)
    hw, hm = _fairscale_shards(heads, bufs & set(heads), head_units, world)
    names = []
    for rank in range(world):
        name = f"model_iteration100_shard{rank}.torch"
        shard = {
            "type": "shard",
            "classy_state_dict": {
                "base_model": {
                    "model": {"trunk": tw[rank], "heads": hw[rank]},
                    "meta": {"trunk": tm[rank], "heads": hm[rank]},
                }
            },
        }
        torch.save(shard, tmp_path / name)
        names.append(name)
    torch.save({"type": "shard_list", "shards": names}, tmp_path / "model_iteration100.torch")
    assert_imports_as(model, tmp_path / "model_iteration100.torch", tmp_path / "m.pt", seed=8)
    (tmp_path / names[1]).unlink()
    with pytest.raises(
        CheckpointError, match=r"shard model_iteration100_shard1\.torch listed in .* is missing"
    ):
        import_vissl(str(tmp_path / "model_iteration100.torch"), str(tmp_path / "m2.pt"), PRESET)


def test_wrong_architecture_lists_first_mismatches_in_one_line(tmp_path):
    torch.save(vissl_checkpoint(randomized_model(), False, True), tmp_path / "in.torch")
    with pytest.raises(
        ArchitectureMismatchError, match=r"shape mismatches.*checkpoint \[.*\] vs model \["
    ) as err:
        import_vissl(str(tmp_path / "in.torch"), str(tmp_path / "m.pt"), "rg-small")
    assert "\n" not in str(err.value) and not (tmp_path / "m.pt").exists()


def test_name_mapping_rejects_foreign_keys():
    assert (
        vissl_to_seer_trunk("trunk._feature_blocks.res5.block4-0.bn.weight")
        == "trunk_output.block4.block4-0.proj.1.weight"
    )
    with pytest.raises(UnknownKeyError, match="not a RegNetY"):
        vissl_to_seer_trunk("_feature_blocks.layer1.0.conv1.weight")


def test_consolidated_tensor_order_is_trunk_then_heads(tmp_path):
    torch.save(vissl_checkpoint(randomized_model(), False, False), tmp_path / "in.torch")
    import_vissl(str(tmp_path / "in.torch"), str(tmp_path / "m.pt"), PRESET)
    with open_consolidated(str(tmp_path / "m.pt"), PRESET) as reader:
        groups = [g for g, _, _ in consolidated_tensors(reader)]
    assert groups == sorted(groups, key=lambda g: g != "trunk") and "heads" in groups


@pytest.mark.slow
def test_import_shards_written_by_real_fairscale_fsdp(tmp_path):
    model = randomized_model(4)
    torch.save(vissl_checkpoint(model, False, False), tmp_path / "conso.torch")
    script = Path(__file__).parent / "dist" / "ckpt_fairscale_shards.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "conso.torch"), str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shard0 = torch.load(tmp_path / "model_iteration5_shard0.torch", weights_only=True)
    meta = shard0["classy_state_dict"]["base_model"]["meta"]["trunk"]
    assert any(m["params"].get("flat_param_0") for m in meta["param_metadata"])  # really flattened + sharded
    assert_imports_as(model, tmp_path / "model_iteration5.torch", tmp_path / "m.pt", seed=8)


def test_fine_tuned_classifier_head_is_kept_and_trunk_loads_alone(tmp_path):
    model = randomized_model(5)
    ckpt = vissl_checkpoint(model, False, True)
    clf = {"0.clf.0.weight": torch.randn(10, model.trunk.feature_dim), "0.clf.0.bias": torch.randn(10)}
    ckpt["classy_state_dict"]["base_model"]["model"]["heads"] = clf
    torch.save(ckpt, tmp_path / "ft.torch")
    import_vissl(str(tmp_path / "ft.torch"), str(tmp_path / "m.pt"), PRESET)
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(loaded["heads"]) == {"clf.0.weight", "clf.0.bias"}
    assert torch.equal(loaded["heads"]["clf.0.weight"], clf["0.clf.0.weight"])
    slice_checkpoint(str(tmp_path / "m.pt"), str(tmp_path / "s"))
    trunk = build_swav_model(PRESET, "cpu", seed=6).trunk
    load_sliced_into_(trunk, str(tmp_path / "s"))
    assert all(torch.equal(v, model.trunk.state_dict()[k]) for k, v in trunk.state_dict().items())
    export_vissl(str(tmp_path / "m.pt"), str(tmp_path / "back.torch"))
    heads = torch.load(tmp_path / "back.torch", weights_only=True)["classy_state_dict"]["base_model"][
        "model"
    ]["heads"]
    assert set(heads) == set(clf)
