"""seer.storage against local folders and moto's S3 server over real HTTP (same test bodies)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest
from urllib3.exceptions import ProtocolError
from urllib3.response import HTTPResponse

import seer.storage as storage
from seer.errors import ConfigError, NotFoundError, StorageError
from seer.storage import _s3

MIB = 1 << 20


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> int:
    """Use S3's minimum part size so multipart paths run on small data."""
    monkeypatch.setenv("SEER_S3_PART_SIZE", "5MiB")
    return 5 * MIB


def _pending_uploads(s3_server, uri: str) -> list:
    loc = storage._common.parse(uri)
    return s3_server.client._list_multipart_uploads(bucket_name=loc.bucket).uploads


def _visible(root: str) -> list[str]:
    return [info.uri for info in storage.list(root)]


# --------------------------------------------------------------------------- the API on both backends


def test_bytes_text_json_roundtrip(storage_root: str) -> None:
    storage.write_bytes(storage.join(storage_root, "b.bin"), b"\x00\x01payload")
    storage.write_text(storage.join(storage_root, "t.txt"), "héllo\n")
    storage.write_json(storage.join(storage_root, "nested/deeper/m.json"), {"shards": [1, 2], "name": "é"})

    assert storage.read_bytes(storage.join(storage_root, "b.bin")) == b"\x00\x01payload"
    assert storage.read_text(storage.join(storage_root, "t.txt")) == "héllo\n"
    assert storage.read_json(storage.join(storage_root, "nested/deeper/m.json")) == {
        "shards": [1, 2],
        "name": "é",
    }
    storage.write_bytes(storage.join(storage_root, "b.bin"), b"replaced")
    assert storage.read_bytes(storage.join(storage_root, "b.bin")) == b"replaced"
    storage.write_bytes(storage.join(storage_root, "empty"), b"")
    assert storage.read_bytes(storage.join(storage_root, "empty")) == b""


def test_put_get_file_and_stream(storage_root: str, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    uri = storage.join(storage_root, "up/file.bin")

    storage.put(src, uri)
    assert storage.get(uri, tmp_path / "out" / "copy.bin") == tmp_path / "out" / "copy.bin"
    assert (tmp_path / "out" / "copy.bin").read_bytes() == src.read_bytes()
    # into an existing folder: keeps the object's name
    (tmp_path / "dl").mkdir()
    assert storage.get(uri, tmp_path / "dl").read_bytes() == src.read_bytes()
    assert storage.get(uri, tmp_path / "dl") == tmp_path / "dl" / "file.bin"

    storage.put(io.BytesIO(b"from a stream"), storage.join(storage_root, "up/stream.bin"))
    assert storage.read_bytes(storage.join(storage_root, "up/stream.bin")) == b"from a stream"
    storage.put(str(src), storage.join(storage_root, "up/str-path.bin"))
    assert storage.stat(storage.join(storage_root, "up/str-path.bin")).size == 300_000


def test_exists_stat_and_etag(storage_root: str) -> None:
    uri = storage.join(storage_root, "obj.bin")
    assert not storage.exists(uri)
    with pytest.raises(NotFoundError, match=r"obj\.bin"):
        storage.stat(uri)

    before = time.time()
    storage.write_bytes(uri, b"12345")
    info = storage.stat(uri)
    assert storage.exists(uri)
    assert (info.uri, info.size, info.is_dir) == (uri, 5, False)
    assert before - 5 <= info.mtime <= time.time() + 5
    assert info.etag
    storage.write_bytes(uri, b"other content")
    assert storage.stat(uri).etag != info.etag
    # a folder is not an object
    storage.write_bytes(storage.join(storage_root, "dir/x"), b"x")
    assert not storage.exists(storage.join(storage_root, "dir"))


def test_list_recursive_and_direct_children(storage_root: str) -> None:
    for name in ["a/1.bin", "a/sub/2.bin", "ab/3.bin", "top.bin"]:
        storage.write_bytes(storage.join(storage_root, name), name.encode())

    assert _visible(storage.join(storage_root, "a")) == [
        storage.join(storage_root, "a/1.bin"),
        storage.join(storage_root, "a/sub/2.bin"),
    ]  # "a" is a folder: "ab/3.bin" is not under it
    assert _visible(storage.join(storage_root, "a") + "/") == _visible(storage.join(storage_root, "a"))
    direct = storage.list(storage_root, recursive=False)
    assert [(i.uri, i.is_dir) for i in direct] == [
        (storage.join(storage_root, "a"), True),
        (storage.join(storage_root, "ab"), True),
        (storage.join(storage_root, "top.bin"), False),
    ]
    assert direct[2].size == len(b"top.bin")
    assert len(storage.list(storage_root)) == 4
    assert storage.list(storage.join(storage_root, "missing")) == []


def test_delete_and_delete_prefix(storage_root: str) -> None:
    for name in ["run/a.bin", "run/deep/b.bin", "run2/c.bin"]:
        storage.write_bytes(storage.join(storage_root, name), b"x")

    storage.delete(storage.join(storage_root, "run/a.bin"))
    assert not storage.exists(storage.join(storage_root, "run/a.bin"))
    storage.delete(storage.join(storage_root, "run/a.bin"))  # idempotent

    assert storage.delete_prefix(storage.join(storage_root, "run")) == 1
    assert _visible(storage_root) == [storage.join(storage_root, "run2/c.bin")]
    assert storage.delete_prefix(storage.join(storage_root, "run")) == 0


def test_copy_within_backend(storage_root: str) -> None:
    src, dst = storage.join(storage_root, "src.json"), storage.join(storage_root, "copies/dst.json")
    storage.write_json(src, {"k": 1})
    storage.copy(src, dst)
    assert storage.read_json(dst) == {"k": 1}
    with pytest.raises(NotFoundError):
        storage.copy(storage.join(storage_root, "nope.json"), dst)
    assert storage.read_json(dst) == {"k": 1}


def test_reader_streams_and_seeks(storage_root: str, small_parts: int) -> None:
    data = os.urandom(12 * MIB)
    uri = storage.join(storage_root, "big.bin")
    storage.write_bytes(uri, data)

    digest = hashlib.sha256()
    with storage.open(uri, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        f.seek(7 * MIB + 3)
        assert f.read(5) == data[7 * MIB + 3 : 7 * MIB + 8]
        assert f.tell() == 7 * MIB + 8
        f.seek(-4, io.SEEK_END)
        assert f.read() == data[-4:]
        f.seek(10)
        assert f.read(3) == data[10:13]


@pytest.mark.parametrize("source", ["file", "stream"])
def test_multipart_upload_roundtrip(
    storage_root: str, small_parts: int, tmp_path: Path, s3_server, source: str
) -> None:
    data = os.urandom(12 * MIB)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    uri = storage.join(storage_root, "model.pt")

    if source == "file":
        storage.put(src, uri)
    else:
        with storage.open(uri, "wb") as f:
            for start in range(0, len(data), 3 * MIB + 17):
                f.write(data[start : start + 3 * MIB + 17])

    out = storage.get(uri, tmp_path / "back.bin")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    if storage.is_remote(uri):
        assert storage.stat(uri).etag.endswith("-3"), "12 MiB in 5 MiB parts is a 3-part upload"
        assert _pending_uploads(s3_server, uri) == []


# --------------------------------------------------------------------------- atomicity


def test_object_invisible_until_writer_closes(storage_root: str, small_parts: int) -> None:
    uri = storage.join(storage_root, "ckpt/step-10.pt")
    writer = storage.open(uri, "wb")
    writer.write(os.urandom(6 * MIB))  # past one part: a multipart upload is under way
    assert not storage.exists(uri)
    assert storage.list(storage_root) == []
    writer.close()
    assert storage.stat(uri).size == 6 * MIB
    assert _visible(storage_root) == [uri]


def test_exception_in_writer_leaves_nothing(storage_root: str, small_parts: int, s3_server) -> None:
    uri = storage.join(storage_root, "ckpt/model.pt")
    with pytest.raises(RuntimeError, match="crash"), storage.open(uri, "wb") as f:
        f.write(os.urandom(11 * MIB))
        raise RuntimeError("crash halfway")
    assert not storage.exists(uri)
    assert storage.list(storage_root) == []
    if storage.is_remote(uri):
        assert _pending_uploads(s3_server, uri) == []


def test_interrupted_overwrite_keeps_old_content(storage_root: str, small_parts: int) -> None:
    uri = storage.join(storage_root, "latest.json")
    storage.write_json(uri, {"step": 1})
    with pytest.raises(KeyboardInterrupt), storage.open(uri, "wb") as f:
        f.write(b'{"step": 2, "trunc')
        raise KeyboardInterrupt
    assert storage.read_json(uri) == {"step": 1}
    assert _visible(storage_root) == [uri]


class FailingStream(io.RawIOBase):
    """A source that yields `good` bytes and then fails, like a dropped network mount."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        if self.left <= 0:
            raise OSError("source went away")
        n = min(len(buffer), self.left)
        buffer[:n] = b"\xab" * n
        self.left -= n
        return n


def test_failing_source_stream_leaves_nothing(storage_root: str, small_parts: int, s3_server) -> None:
    uri = storage.join(storage_root, "data/shard-000.tar")
    with pytest.raises(OSError, match="source went away"):
        storage.put(FailingStream(good=13 * MIB), uri)
    assert not storage.exists(uri)
    assert storage.list(storage_root) == []
    if storage.is_remote(uri):
        assert _pending_uploads(s3_server, uri) == []


def test_discard_and_garbage_collected_writer_leave_nothing(storage_root: str) -> None:
    uri = storage.join(storage_root, "x.bin")
    writer = storage.open(uri, "wb")
    writer.write(b"abc")
    writer.discard()
    assert writer.closed and not storage.exists(uri)

    writer = storage.open(uri, "wb")
    writer.write(b"abc")
    del writer  # never closed: dropped, not committed
    assert not storage.exists(uri)
    assert storage.list(storage_root) == []

    writer = storage.open(uri, "wb")
    writer.write(b"committed")
    writer.close()  # close() without a with-block commits
    assert storage.read_bytes(uri) == b"committed"


# --------------------------------------------------------------------------- errors


def test_missing_local_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nope\.bin.*check the path"):
        storage.read_bytes(tmp_path / "nope.bin")
    with pytest.raises(NotFoundError):
        storage.get(str(tmp_path / "nope.bin"), tmp_path / "out")
    with pytest.raises(StorageError, match="is a directory"):
        storage.stat(tmp_path)


def test_missing_bucket_is_not_found(s3_server) -> None:
    uri = "s3://no-such-bucket-seer/a/b.json"
    for call in (
        lambda: storage.stat(uri),
        lambda: storage.read_bytes(uri),
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.list("s3://no-such-bucket-seer/a"),
        lambda: storage.exists(uri),
    ):
        with pytest.raises(NotFoundError) as err:
            call()
        message = str(err.value)
        assert "bucket 'no-such-bucket-seer' does not exist" in message
        assert s3_server.endpoint_url in message and "create it" in message


def test_missing_key_is_not_found(s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/runs/missing.json"
    for call in (
        lambda: storage.stat(uri),
        lambda: storage.read_json(uri),
        lambda: storage.get(uri, tmp_path / "x"),
        lambda: storage.copy(uri, f"s3://{s3_bucket}/copy.json"),
    ):
        with pytest.raises(NotFoundError, match=f"key 'runs/missing.json' in bucket '{s3_bucket}'"):
            call()
    assert not storage.exists(uri)
    assert not (tmp_path / "x").exists()


def test_bad_uris_raise_storage_errors(s3_bucket: str) -> None:
    with pytest.raises(StorageError, match="unsupported URI scheme 'gs'"):
        storage.read_bytes("gs://bucket/key")
    with pytest.raises(StorageError, match="no bucket name"):
        storage.stat("s3:///key")
    with pytest.raises(StorageError, match="not an object"):
        storage.write_bytes(f"s3://{s3_bucket}", b"x")
    with pytest.raises(StorageError, match="not an object"):
        storage.write_bytes(f"s3://{s3_bucket}/folder/", b"x")
    with pytest.raises(StorageError, match="invalid S3 location"):
        storage.stat("s3://bad..name/x")
    with pytest.raises(NotFoundError, match="no such file"):
        storage.put("/no/such/source.bin", f"s3://{s3_bucket}/x")
    with pytest.raises(StorageError, match="use 'rb' or 'wb'"):
        storage.open(f"s3://{s3_bucket}/x", "r")
    with pytest.raises(StorageError, match="not valid JSON"):
        storage.write_text(f"s3://{s3_bucket}/bad.json", "{")
        storage.read_json(f"s3://{s3_bucket}/bad.json")


def test_missing_endpoint_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _s3.ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"SEER_S3_ENDPOINT.*AWS_ENDPOINT_URL"):
        storage.read_bytes("s3://bucket/key")


def test_settings_from_env() -> None:
    s = _s3.settings_from_env({"MINIO_ENDPOINT": "minio-service.kubeflow:9000", "SEER_S3_SECURE": "false"})
    assert (s.endpoint, s.secure, s.access_key, s.region) == (
        "minio-service.kubeflow:9000",
        False,
        None,
        "us-east-1",
    )
    assert s.endpoint_url == "http://minio-service.kubeflow:9000"
    s = _s3.settings_from_env(
        {
            "AWS_ENDPOINT_URL": "https://s3.example.com",
            "SEER_S3_ENDPOINT": "http://seaweedfs.kubeflow:8333",  # SEER_* wins
            "AWS_ACCESS_KEY_ID": "minio",
            "AWS_SECRET_ACCESS_KEY": "minio123",
            "AWS_REGION": "eu-west-1",
            "SEER_S3_PART_SIZE": "16MiB",
            "SEER_S3_RETRY_SECONDS": "30",
        }
    )
    assert (s.endpoint, s.secure, s.access_key, s.secret_key) == (
        "seaweedfs.kubeflow:8333",
        False,
        "minio",
        "minio123",
    )
    assert (s.region, s.part_size, s.retry_s) == ("eu-west-1", 16 * MIB, 30.0)
    assert _s3.settings_from_env({"SEER_S3_ENDPOINT": "s3.example.com"}).secure  # bare host: TLS by default

    bad = [
        ({"SEER_S3_ENDPOINT": "http://h:9000/path"}, "no path"),
        ({"SEER_S3_ENDPOINT": "ftp://h"}, "not an endpoint"),
        ({"SEER_S3_ENDPOINT": "h", "SEER_S3_ACCESS_KEY": "a"}, "incomplete"),
        ({"SEER_S3_ENDPOINT": "h", "SEER_S3_PART_SIZE": "1MiB"}, "5MiB to 5GiB"),
        ({"SEER_S3_ENDPOINT": "h", "SEER_S3_PART_SIZE": "lots"}, "not a size"),
        ({"SEER_S3_ENDPOINT": "h", "SEER_S3_SECURE": "maybe"}, "not a boolean"),
        ({"SEER_S3_ENDPOINT": "h", "SEER_S3_RETRY_SECONDS": "-1"}, "at least 0"),
        ({"SEER_S3_ENDPOINT": "h", "SEER_S3_CA_BUNDLE": "/no/such/ca.pem"}, "not a file"),
    ]
    for env, message in bad:
        with pytest.raises(ConfigError, match=message):
            _s3.settings_from_env(env)


def test_uri_helpers(tmp_path: Path) -> None:
    assert storage.join("s3://b", "runs/", "/x.json") == "s3://b/runs/x.json"
    assert storage.join("s3://b/", "k") == "s3://b/k"
    assert storage.join("/data", "a", "", "b") == "/data/a/b"
    assert storage.join("file:///", "tmp") == "file:///tmp"
    assert storage.is_remote("minio://mlpipeline/v2/artifacts") and storage.is_remote("s3://b/k")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")
    assert storage.local_path("file:///tmp/a%20b") == Path("/tmp/a b")
    assert storage.local_path("file://localhost/tmp/x") == Path("/tmp/x")
    assert storage.local_path("s3://b/k") is None
    with pytest.raises(StorageError, match="must be absolute"):
        storage.local_path("file://otherhost/x")

    uri = (tmp_path / "with space").as_uri()
    storage.write_text(storage.join(uri, "f.txt"), "hi")
    assert (tmp_path / "with space" / "f.txt").read_text() == "hi"
    assert [i.uri for i in storage.list(uri)] == [f"{uri}/f.txt"]


# --------------------------------------------------------------------------- S3 specifics


def test_minio_scheme_is_s3(s3_bucket: str) -> None:
    storage.write_json(f"minio://{s3_bucket}/v2/artifacts/m.json", {"a": 1})
    assert storage.read_json(f"s3://{s3_bucket}/v2/artifacts/m.json") == {"a": 1}
    assert [i.uri for i in storage.list(f"minio://{s3_bucket}/v2")] == [
        f"minio://{s3_bucket}/v2/artifacts/m.json"
    ]
    storage.copy(f"minio://{s3_bucket}/v2/artifacts/m.json", f"s3://{s3_bucket}/copy.json")
    assert storage.read_json(f"minio://{s3_bucket}/copy.json") == {"a": 1}


def test_copy_across_backends(s3_bucket: str, tmp_path: Path, small_parts: int) -> None:
    data = os.urandom(6 * MIB + 1)
    (tmp_path / "a.bin").write_bytes(data)
    storage.copy(str(tmp_path / "a.bin"), f"s3://{s3_bucket}/a.bin")
    storage.copy(f"s3://{s3_bucket}/a.bin", (tmp_path / "b" / "b.bin").as_uri())
    assert (tmp_path / "b" / "b.bin").read_bytes() == data
    assert storage.stat(f"s3://{s3_bucket}/a.bin").etag.endswith("-2")


def test_read_resumes_after_connection_drop(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * MIB)
    uri = f"s3://{s3_bucket}/resume.bin"
    storage.write_bytes(uri, data)
    real_read = HTTPResponse.read
    drops = []

    def flaky_read(self, amt=None, *args, **kwargs):
        if self.tell() >= MIB and len(drops) < 2:
            drops.append(self.tell())
            raise ProtocolError("Connection broken: connection reset by peer")
        return real_read(self, amt, *args, **kwargs)

    monkeypatch.setattr(HTTPResponse, "read", flaky_read)
    digest = hashlib.sha256()
    with storage.open(uri, "rb") as f:
        while chunk := f.read(256 * 1024):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()
    assert len(drops) == 2


def test_read_detects_object_replaced_mid_read(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/changing.bin"
    storage.write_bytes(uri, b"a" * (3 * MIB))
    with storage.open(uri, "rb") as f:
        f.read(10)
        storage.write_bytes(uri, b"b" * (3 * MIB))
        f.seek(2 * MIB)  # forces a new ranged GET
        with pytest.raises(StorageError, match="changed while it was being read"):
            f.read(10)


def test_streaming_read_fetches_only_what_is_read(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/huge.bin"
    storage.write_bytes(uri, os.urandom(16 * MIB))
    with storage.open(uri, "rb") as f:
        f.read(100)
        fetched = f.raw._resp.tell()
        assert fetched <= 2 * MIB, f"read 100 bytes but pulled {fetched} bytes off the wire"


class FlakyHTTP:
    """Wraps the client's urllib3 pool: the first `fail` requests fail with `failure()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: int, failure) -> None:
        self.store = _s3.store()
        self.real = self.store.client._http.urlopen
        self.fail, self.failure, self.calls = fail, failure, 0
        monkeypatch.setattr(self.store.client._http, "urlopen", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.fail:
            return self.failure()
        return self.real(*args, **kwargs)


def _reset() -> None:
    raise ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))


def _error_response(status: int, code: str) -> HTTPResponse:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
    return HTTPResponse(
        body=io.BytesIO(body),
        headers={"content-type": "application/xml"},
        status=status,
        preload_content=False,
    )


def test_transient_errors_are_retried(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/retried.json"
    flaky = FlakyHTTP(monkeypatch, fail=3, failure=_reset)
    storage.write_json(uri, {"ok": True})
    assert flaky.calls == 4

    flaky = FlakyHTTP(monkeypatch, fail=2, failure=lambda: _error_response(503, "SlowDown"))
    assert storage.read_json(uri) == {"ok": True}
    assert flaky.calls == 3


def test_retries_give_up_after_the_bounded_time(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEER_S3_RETRY_SECONDS", "1")
    flaky = FlakyHTTP(monkeypatch, fail=10**6, failure=_reset)
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"failed after \d+ attempt\(s\) over 1 s.*SEER_S3_RETRY_SECONDS"):
        storage.write_bytes(f"s3://{s3_bucket}/never.bin", b"x")
    assert 1.0 <= time.monotonic() - start < 3.0
    assert flaky.calls > 2


def test_permanent_errors_fail_at_once(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = FlakyHTTP(monkeypatch, fail=10**6, failure=lambda: _error_response(403, "AccessDenied"))
    with pytest.raises(StorageError, match=r"access denied.*SEER_S3_ACCESS_KEY.*mlpipeline-minio-artifact"):
        storage.write_bytes(f"s3://{s3_bucket}/denied.bin", b"x")
    assert flaky.calls == 1


def test_unreachable_endpoint_gives_up_with_clear_error(monkeypatch: pytest.MonkeyPatch, s3_server) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SEER_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SEER_S3_RETRY_SECONDS", "0.5")
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}.*unreachable or overloaded"):
        storage.read_bytes("s3://bucket/key")


def test_server_outage_is_ridden_out(s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEER_S3_RETRY_SECONDS", "20")
    uri = f"s3://{s3_bucket}/during-outage.json"
    s3_server.stop()
    restart = threading.Timer(1.0, s3_server.start)
    restart.start()
    try:
        storage.write_json(uri, {"survived": True})
    finally:
        restart.join()
    assert storage.read_json(uri) == {"survived": True}


def test_lost_complete_response_is_recognised(
    s3_bucket: str, small_parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CompleteMultipartUpload succeeded but its answer was lost: the retry sees NoSuchUpload."""
    client = _s3.store().client
    real = client._complete_multipart_upload
    calls = []

    def complete_then_drop(**kwargs):
        calls.append(kwargs["upload_id"])
        result = real(**kwargs)
        if len(calls) == 1:
            raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return result

    monkeypatch.setattr(client, "_complete_multipart_upload", complete_then_drop)
    data = os.urandom(6 * MIB)
    storage.write_bytes(f"s3://{s3_bucket}/done.bin", data)
    assert len(calls) == 2
    assert storage.read_bytes(f"s3://{s3_bucket}/done.bin") == data


def test_forked_child_gets_its_own_client(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/fork.json"
    storage.write_json(uri, {"parent": 1})
    parent_store = _s3.store()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's pooled connections
        code = 1
        try:
            ok = _s3.store() is not parent_store and storage.read_json(uri) == {"parent": 1}
            storage.write_json(f"s3://{s3_bucket}/child.json", {"child": 1})
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.read_json(f"s3://{s3_bucket}/child.json") == {"child": 1}
    assert _s3.store() is parent_store


def test_failed_part_upload_aborts_everything(
    s3_server, s3_bucket: str, small_parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEER_S3_RETRY_SECONDS", "0.3")
    client = _s3.store().client
    real = client._upload_part

    def second_part_fails(**kwargs):
        if kwargs["part_number"] == 2:
            raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return real(**kwargs)

    monkeypatch.setattr(client, "_upload_part", second_part_fails)
    uri = f"s3://{s3_bucket}/parts.bin"
    with pytest.raises(StorageError, match=r"upload part 2 of .*parts\.bin failed"):
        storage.write_bytes(uri, os.urandom(16 * MIB))
    assert not storage.exists(uri)
    assert _pending_uploads(s3_server, uri) == []


def test_threads_share_the_client(storage_root: str) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            uri = storage.join(storage_root, f"t/{i}.bin")
            payload = os.urandom(50_000 + i)
            storage.write_bytes(uri, payload)
            assert storage.read_bytes(uri) == payload
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(storage.list(storage.join(storage_root, "t"))) == 8
