"""Shared pytest fixtures.

Object storage (use these instead of starting your own S3 server):

- `s3_server` (session): moto's real S3 server over HTTP on 127.0.0.1 (random free port), started
  once per session. While it runs, the environment points `seer.storage` (and child processes)
  at it: SEER_S3_ENDPOINT=http://127.0.0.1:PORT, SEER_S3_ACCESS_KEY / SEER_S3_SECRET_KEY,
  SEER_S3_REGION=us-east-1, SEER_S3_RETRY_SECONDS=5. Yields an `S3Server` (endpoint_url, client,
  plus stop() / start() for tests of outages).
- `s3_bucket` (function): a fresh, empty bucket name for one test; emptied and removed afterwards.
- `storage_root` (function, parametrized "local" / "s3"): a base URI, `tmp_path` as a plain path or
  `s3://<fresh bucket>/root`, so one test body runs against both backends:

      def test_roundtrip(storage_root):
          uri = storage.join(storage_root, "a/b.json")
          storage.write_json(uri, {"x": 1})
          assert storage.read_json(uri) == {"x": 1}

Torch:

- `one_torch_thread` (function): torch runs intra-op work on one thread for the test, then restores
  the count; use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
- `single_process_group` (function): a 1-process gloo group for FSDP/DCP in this process (reuses
  one that already exists; destroys only the one it created).

Kubernetes:

- `kube` (function): a `tests.fake_kube.FakeKube` reached the way the launcher finds a real
  cluster, through a kubeconfig (KUBECONFIG points at one naming the fake's URL; in-cluster
  detection is off). Modules that hand the launcher an api client directly define their own `kube`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.fake_kube import FakeKube

if TYPE_CHECKING:  # imported lazily: moto takes over a second to import
    from minio import Minio
    from moto.server import ThreadedMotoServer

S3_TEST_ENV = {
    "SEER_S3_ACCESS_KEY": "seer-test",
    "SEER_S3_SECRET_KEY": "seer-test-secret",
    "SEER_S3_REGION": "us-east-1",
    "SEER_S3_RETRY_SECONDS": "5",
}
S3_UNSET_ENV = ("SEER_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN", "SEER_S3_CA_BUNDLE", "SEER_S3_PART_SIZE")


@dataclass
class S3Server:
    """A running moto S3 server; `client` is a plain minio client for test setup and checks."""

    server: ThreadedMotoServer
    host: str
    port: int
    client: Minio = field(init=False)

    def __post_init__(self) -> None:
        from minio import Minio

        self.client = Minio(
            endpoint=f"{self.host}:{self.port}",
            access_key=S3_TEST_ENV["SEER_S3_ACCESS_KEY"],
            secret_key=S3_TEST_ENV["SEER_S3_SECRET_KEY"],
            secure=False,
            region=S3_TEST_ENV["SEER_S3_REGION"],
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Take the server off the network (state is kept); start() brings it back on the same port."""
        self.server.stop()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self.server.start()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    running = S3Server(server=server, host=host, port=port)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEER_S3_ENDPOINT", running.endpoint_url)
        for name, value in S3_TEST_ENV.items():
            mp.setenv(name, value)
        for name in S3_UNSET_ENV:
            mp.delenv(name, raising=False)
        yield running
    running.server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    from minio.deleteobjects import DeleteObject

    name = f"seer-test-{uuid.uuid4().hex[:16]}"
    s3_server.client.make_bucket(bucket_name=name)
    yield name
    client = s3_server.client
    if client.bucket_exists(bucket_name=name):
        objects = client.list_objects(bucket_name=name, recursive=True)
        errors = list(
            client.remove_objects(
                bucket_name=name, delete_object_list=(DeleteObject(o.object_name) for o in objects)
            )
        )
        assert not errors, errors
        for upload in client._list_multipart_uploads(bucket_name=name).uploads:
            client._abort_multipart_upload(
                bucket_name=name, object_name=upload.object_name, upload_id=upload.upload_id
            )
        client.remove_bucket(bucket_name=name)


@pytest.fixture(params=["local", "s3"])
def storage_root(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/root"


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Intra-op threads spin against each other on this shared 2-core CI box: 50x slower steps."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_process_group() -> Iterator[None]:
    """A 1-process gloo group for FSDP/DCP in this process (reuses one that already exists)."""
    import torch.distributed as dist

    from seer.train.parallel import init_distributed

    own = not dist.is_initialized()
    init_distributed()
    yield
    if own:
        dist.destroy_process_group()


@pytest.fixture
def kube(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    with FakeKube() as fake:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
            "current-context": "fake",
        }
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield fake
