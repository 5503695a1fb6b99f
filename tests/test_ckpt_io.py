"""Streaming torch-zip archives: files we write load with torch.load (mmap too); torch.save files read lazily."""

from __future__ import annotations

import pytest
import torch

from seer.checkpoints.io import (
    CheckpointError,
    LazyTensor,
    open_archive,
    save_streamed,
    sha256_tensor,
    tensor_bytes,
)

TENSORS = {
    "f32": torch.randn(3, 5),
    "i64": torch.arange(7),
    "scalar": torch.tensor(3),
    "bf16": torch.randn(4, 2).bfloat16(),
    "empty": torch.zeros(0, 3),
    "bool": torch.tensor([True, False]),
}


def _write(path: str, chunk: int | None = None) -> None:
    def build(writer):
        def pieces(t: torch.Tensor):
            raw = tensor_bytes(t)
            step = chunk or max(1, len(raw))
            return [raw[i : i + step] for i in range(0, len(raw), step)] or [raw]

        recs = {k: writer.write_stream(v.dtype, tuple(v.shape), pieces(v)) for k, v in TENSORS.items()}
        return {"format": "test", "n": 3, "cfg": {"a": [1, 2]}, "tensors": recs}

    save_streamed(path, build, hash_tensors=True)


@pytest.mark.parametrize("mmap", [True, False])
def test_written_archive_loads_with_torch_load(tmp_path, mmap):
    path = str(tmp_path / "x.pt")
    _write(path, chunk=5)
    loaded = torch.load(path, mmap=mmap, weights_only=True)
    assert loaded["format"] == "test" and loaded["cfg"] == {"a": [1, 2]}
    for name, tensor in TENSORS.items():
        assert loaded["tensors"][name].dtype == tensor.dtype
        assert torch.equal(loaded["tensors"][name], tensor), name


def test_reader_streams_chunks_and_hashes_match(tmp_path):
    path = str(tmp_path / "x.pt")
    _write(path)
    with open_archive(path) as reader:
        found = reader.obj["tensors"]
        assert set(found) == set(TENSORS)
        for name, lazy in found.items():
            full = reader.read(lazy)
            assert torch.equal(full, TENSORS[name])
            assert b"".join(bytes(c) for c in reader.iter_chunks(lazy, chunk=4)) == bytes(tensor_bytes(full))
            assert sha256_tensor(full) == sha256_tensor(TENSORS[name])


def test_reader_handles_torch_save_views_and_parameters(tmp_path):
    base = torch.randn(10, 10)
    torch.save({"rows": base[2:5], "t": base.t(), "p": torch.nn.Parameter(torch.ones(2))}, tmp_path / "v.pt")
    with open_archive(str(tmp_path / "v.pt")) as reader:
        assert isinstance(reader.obj["p"], LazyTensor)
        assert torch.equal(reader.read(reader.obj["rows"]), base[2:5])
        assert torch.equal(reader.read(reader.obj["t"]), base.t())
        assert torch.equal(reader.read(reader.obj["p"]), torch.ones(2))


def test_truncated_archive_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.pt"
    _write(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated|not a readable torch checkpoint") as err:
        open_archive(str(path))
    assert "\n" not in str(err.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_archive(str(tmp_path / "nope.pt"))
