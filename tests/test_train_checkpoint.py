"""DCP checkpoints: the documented layout, round trips on local and S3 storage, incomplete saves, pruning."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest
import torch
import torch.distributed.checkpoint as dcp

from seer import storage
from seer.config import load_config
from seer.errors import StorageError
from seer.train import checkpoint
from seer.train.parallel import build_model, init_distributed, parallelize


def _tiny_training_state() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    cfg = load_config("rg-tiny")
    env = init_distributed()
    model, _ = parallelize(build_model(cfg), cfg, env, shard=True)  # DTensors, as on every multi-rank run
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
    assert set(marker) == {"iteration", "preset", "config", "world_size", "created", "format", "checksums"}
    names = {o.uri.rsplit("/", 1)[-1] for o in storage.list(uri)}
    assert ".metadata" in names and any(n.endswith(".distcp") for n in names)
    assert set(marker["checksums"]) == names - {checkpoint.MARKER}  # every data file, hashed by its writer
    for name, digest in marker["checksums"].items():
        assert hashlib.sha256(storage.read_bytes(storage.join(uri, name))).hexdigest() == digest

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
    sharded, _ = parallelize(build_model(cfg), cfg, env, shard=True)
    sharded_opt = torch.optim.SGD(sharded.parameters(), lr=0.1, momentum=0.9)
    assert checkpoint.load(uri, sharded, sharded_opt).iteration == 3
    for name, value in sharded.state_dict().items():
        whole = value.full_tensor() if hasattr(value, "full_tensor") else value
        assert torch.equal(whole, local.state_dict()[name]), name


def _save(output: str, iteration: int, model, optimizer, **kwargs) -> str:
    return checkpoint.save(output, iteration, model, optimizer, scheduler={}, rank_state={"it": iteration},
                           marker={"preset": "rg-tiny"}, keep_last=3, **kwargs)  # fmt: skip


def test_a_corrupted_newest_checkpoint_is_skipped_for_the_previous_one(
    single_process_group: None, storage_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One flipped byte in a data file of the newest checkpoint: resume takes the previous one, warns,
    and the corrupt folder loses its marker (so it is cleaned up like an interrupted save)."""
    output = storage.join(storage_root, "run")
    model, optimizer = _tiny_training_state()
    _save(output, 3, model, optimizer)
    newest = _save(output, 6, model, optimizer)
    assert checkpoint.verify(newest) == [] and checkpoint.latest_verified(output).iteration == 6
    data = sorted(n for n in checkpoint.read_marker(newest)["checksums"] if n.endswith(".distcp"))[0]
    blob = bytearray(storage.read_bytes(storage.join(newest, data)))
    blob[len(blob) // 2] ^= 0x01
    storage.write_bytes(storage.join(newest, data), bytes(blob))
    assert checkpoint.verify(newest) == [data]
    with caplog.at_level(logging.WARNING, logger="seer.train.checkpoint"):
        ref = checkpoint.latest_verified(output)
    assert ref is not None and ref.iteration == 3
    assert f"checkpoint {newest} is corrupt (1 file(s) fail their checksum: {data})" in caplog.text
    assert [(c.iteration, c.complete) for c in checkpoint.list_checkpoints(output)] == [(3, True), (6, False)]
    assert checkpoint.load(ref.uri, model, optimizer).rank_state == {"it": 3}


class _Outage:
    """`storage.put` failing like an unreachable object store for the first `failures` calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, failures: int) -> None:
        self.failures, self.calls, self._put = failures, 0, storage.put
        monkeypatch.setattr(checkpoint.storage, "put", self)

    def __call__(self, src, uri):
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageError(f"S3 request PUT {uri} failed after 1 attempt(s): connection refused")
        return self._put(src, uri)


def test_a_save_retries_an_outage_within_its_budget(
    single_process_group: None, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = f"s3://{s3_bucket}/run"
    model, optimizer = _tiny_training_state()
    outage = _Outage(monkeypatch, failures=2)
    uri = _save(output, 2, model, optimizer, retry_seconds=30)
    assert outage.calls > 2 and checkpoint.latest_verified(output).uri == uri


def test_a_save_that_stays_unreachable_fails_without_looking_complete(
    single_process_group: None, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = f"s3://{s3_bucket}/run"
    model, optimizer = _tiny_training_state()
    _save(output, 2, model, optimizer)
    outage = _Outage(monkeypatch, failures=10**6)
    start = time.monotonic()
    with pytest.raises(checkpoint.SaveFailed, match=r"iter-00000004 was not saved: S3 request PUT"):
        _save(output, 4, model, optimizer, retry_seconds=1.5)
    assert 1.5 <= time.monotonic() - start < 10 and outage.calls >= 2
    assert checkpoint.latest_complete(output).iteration == 2  # nothing new looks complete
    monkeypatch.undo()
    assert _save(output, 4, model, optimizer).endswith("iter-00000004")  # the next save starts clean


def test_a_save_past_its_deadline_is_abandoned_without_a_marker(single_process_group: None, tmp_path) -> None:
    output = str(tmp_path / "run")
    model, optimizer = _tiny_training_state()
    with pytest.raises(checkpoint.SaveAbandoned, match="grace period ended"):
        _save(output, 5, model, optimizer, deadline=time.monotonic())
    assert [(c.iteration, c.complete) for c in checkpoint.list_checkpoints(output)] == [(5, False)]
