"""DCP checkpoints: the documented layout, round trips on local and S3 storage, incomplete saves, pruning."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from seer import storage
from seer.config import load_config
from seer.train import checkpoint
from seer.train.parallel import build_model, init_distributed, parallelize


@pytest.fixture
def single_process_group() -> Iterator[None]:
    """A 1-process gloo group for FSDP/DCP in this process (reuses one that already exists)."""
    own = not dist.is_initialized()
    init_distributed()
    yield
    if own:
        dist.destroy_process_group()


def _tiny_training_state() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    cfg = load_config("rg-tiny")
    env = init_distributed()
    model, _ = parallelize(build_model(cfg), cfg, env)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    _, scores = model(crops)
    scores[0].square().mean().backward()
    optimizer.step()
    return model, optimizer


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor().clone() for k, v in model.state_dict().items() if hasattr(v, "full_tensor")}


def test_save_load_roundtrip_with_the_documented_layout(
    single_process_group: None, storage_root: str
) -> None:
    output = storage.join(storage_root, "run")
    model, optimizer = _tiny_training_state()
    before = _params(model)
    momentum = {
        k: v["momentum_buffer"].full_tensor().clone() for k, v in optimizer.state_dict()["state"].items()
    }
    rank_state = {"loader": {"epoch": 1, "consumed": 32}, "rng": checkpoint.rng_state()}
    uri = checkpoint.save(
        output,
        7,
        model,
        optimizer,
        scheduler={"peak_lr": 0.3},
        rank_state=rank_state,
        marker={"preset": "rg-tiny", "config": {"x": 1}},
        keep_last=2,
    )
    assert uri == storage.join(output, "checkpoints", "iter-00000007")
    marker = checkpoint.read_marker(uri)
    assert {k: marker[k] for k in ("iteration", "preset", "world_size", "format")} == {
        "iteration": 7,
        "preset": "rg-tiny",
        "world_size": 1,
        "format": "seer-dcp-v1",
    }
    assert set(marker) == {"iteration", "preset", "config", "world_size", "created", "format"}
    names = {o.uri.rsplit("/", 1)[-1] for o in storage.list(uri)}
    assert ".metadata" in names and any(n.endswith(".distcp") for n in names)

    local = storage.local_path(uri)
    if local is not None:  # the keys readers rely on: unwrapped model names, optim, extra
        keys = set(dcp.FileSystemReader(str(local)).read_metadata().state_dict_metadata)
        assert "model.trunk.stem.0.weight" in keys and "model.head.prototypes.0.weight" in keys
        assert "model.trunk.trunk_output.block1.block1-0.f.a.1.running_mean" in keys
        assert not any("_fsdp" in k or "_checkpoint_wrapped" in k for k in keys)
        assert any(k.startswith("optim.state.trunk.") for k in keys)
        assert {"extra.iteration", "extra.rank0"} <= keys

    with torch.no_grad():
        for p in model.parameters():
            p.to_local().zero_()
    for state in optimizer.state.values():
        state["momentum_buffer"].to_local().zero_()
    restored = checkpoint.load(uri, model, optimizer)
    assert restored.iteration == 7 and restored.scheduler == {"peak_lr": 0.3}
    assert restored.rank_state["loader"] == {"epoch": 1, "consumed": 32}
    assert torch.equal(restored.rank_state["rng"]["torch"], rank_state["rng"]["torch"])
    after = _params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    restored_momentum = optimizer.state_dict()["state"]
    assert all(
        torch.equal(momentum[k], restored_momentum[k]["momentum_buffer"].full_tensor()) for k in momentum
    )


def _fake(output: str, iteration: int, complete: bool) -> str:
    uri = checkpoint.checkpoint_uri(output, iteration)
    storage.write_bytes(storage.join(uri, "__0_0.distcp"), b"partial")
    if complete:
        storage.write_json(storage.join(uri, checkpoint.MARKER), {"iteration": iteration})
    return uri


def test_incomplete_saves_are_never_resumed_and_get_pruned(storage_root: str) -> None:
    output = storage.join(storage_root, "run")
    assert checkpoint.list_checkpoints(output) == [] and checkpoint.latest_complete(output) is None
    for it, complete in [(2, True), (4, True), (5, False), (6, True), (8, False)]:
        _fake(output, it, complete)
    storage.write_bytes(storage.join(output, "checkpoints", "notes.txt"), b"not a checkpoint")
    assert [(c.iteration, c.complete) for c in checkpoint.list_checkpoints(output)] == [
        (2, True),
        (4, True),
        (5, False),
        (6, True),
        (8, False),
    ]
    assert checkpoint.latest_complete(output).iteration == 6
    deleted = checkpoint.prune(output, keep_last=2)  # drops iter 2 and the torn iter 5; 8 may be in flight
    assert sorted(deleted) == sorted(checkpoint.checkpoint_uri(output, i) for i in (2, 5))
    assert [c.iteration for c in checkpoint.list_checkpoints(output)] == [4, 6, 8]
    assert checkpoint.remove_incomplete(output) == [checkpoint.checkpoint_uri(output, 8)]
    assert [(c.iteration, c.complete) for c in checkpoint.list_checkpoints(output)] == [(4, True), (6, True)]


def test_one_gpu_unsharded_checkpoint_loads_into_the_sharded_model(
    single_process_group: None, tmp_path
) -> None:
    """The one-GPU path (`shard=False`, bf16 autocast) saves the same DCP keys; a sharded model restores it."""
    cfg = load_config("rg-tiny", ["train.precision=bf16", "train.channels_last='on'"])
    env = init_distributed()
    local, _ = parallelize(build_model(cfg), cfg, env, shard=False)
    optimizer = torch.optim.SGD(local.parameters(), lr=0.1, momentum=0.9)
    _, scores = local([torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)])
    scores[0].square().mean().backward()
    optimizer.step()
    uri = checkpoint.save(str(tmp_path / "run"), 3, local, optimizer, scheduler={}, rank_state={},
                          marker={"preset": "rg-tiny"}, keep_last=1)  # fmt: skip
    sharded, _ = parallelize(build_model(cfg), cfg, env)
    sharded_opt = torch.optim.SGD(sharded.parameters(), lr=0.1, momentum=0.9)
    assert checkpoint.load(uri, sharded, sharded_opt).iteration == 3
    for name, value in sharded.state_dict().items():
        whole = value.full_tensor() if hasattr(value, "full_tensor") else value
        assert torch.equal(whole, local.state_dict()[name]), name
