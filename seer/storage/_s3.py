"""S3 backend (s3:// and minio://) on the minio client.

Configuration comes from environment variables (see docs/storage.md), read on every call so a
changed environment takes effect; clients are cached per configuration and process. Every request
retries transient failures with exponential backoff and jitter within SEER_S3_RETRY_SECONDS.
Uploads are our own multipart uploads (minio 7.2's part-level calls) so that each part retries on
its own, memory stays bounded, and a failure aborts the upload: nothing half-written becomes visible.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import math
import mimetypes
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import (
    HTTPError,
    IncompleteRead,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)
from urllib3.response import HTTPResponse

from seer.errors import ConfigError, NotFoundError, StorageError
from seer.storage._common import AtomicWriter, Location, ObjectInfo

T = TypeVar("T")
log = logging.getLogger(__name__)

MIB = 1 << 20
MIN_PART = 5 * MIB
MAX_PART = 5 << 30
MAX_PARTS = 10_000
MAX_OBJECT = 5 << 40

ENDPOINT_VARS = ("SEER_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT")
ACCESS_VARS = ("SEER_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY")
SECRET_VARS = ("SEER_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY")
TOKEN_VARS = ("SEER_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN")
REGION_VARS = ("SEER_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION", "MINIO_REGION")
CA_VARS = ("SEER_S3_CA_BUNDLE", "AWS_CA_BUNDLE", "SSL_CERT_FILE")

DEFAULT_REGION = "us-east-1"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRY_S = 120.0
DEFAULT_PART_SIZE = 32 * MIB
DEFAULT_CONCURRENCY = 4

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "SlowDownRead",
        "SlowDownWrite",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "XMinioServerNotInitialized",
    }
)
AUTH_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class S3Settings:
    """Everything that defines a client, read from the environment by `settings_from_env()`."""

    endpoint: str  # host[:port], no scheme
    secure: bool
    access_key: str | None
    secret_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str
    ca_bundle: str
    verify: bool
    timeout_s: float
    retry_s: float
    part_size: int
    concurrency: int

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


def _first(env: dict[str, str] | os._Environ[str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _bool(env: dict[str, str] | os._Environ[str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a boolean: use true or false")


def _number(env: dict[str, str] | os._Environ[str], name: str, default: float, minimum: float) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number of seconds: use e.g. {default:g}") from None
    if not number >= minimum:
        raise ConfigError(f"{name}={value!r} must be at least {minimum:g}")
    return number


def parse_size(text: str, name: str) -> int:
    """Parse '5MiB', '64M', '1GiB' or plain bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(i?B?)\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise ConfigError(f"{name}={text!r} is not a size: use bytes or a suffix, e.g. 64MiB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]
    return int(match.group(1)) * scale


def settings_from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> S3Settings:
    """Read the S3 configuration; a missing endpoint or a malformed value raises ConfigError."""
    found = _first(env, ENDPOINT_VARS)
    if found is None:
        raise ConfigError(
            "no S3 endpoint configured for s3:// / minio:// URIs: set SEER_S3_ENDPOINT "
            f"(or one of {', '.join(ENDPOINT_VARS[1:])}), e.g. http://minio-service.kubeflow:9000, "
            "plus SEER_S3_ACCESS_KEY / SEER_S3_SECRET_KEY (see docs/storage.md)"
        )
    name, raw = found
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise ConfigError(
                f"{name}={raw!r} is not an endpoint: use http(s)://host:port with no path, or host:port"
            )
        endpoint, secure = parts.netloc, parts.scheme == "https"
    else:
        endpoint, secure = raw.rstrip("/"), _bool(env, "SEER_S3_SECURE", True)
    access, secret = _first(env, ACCESS_VARS), _first(env, SECRET_VARS)
    if (access is None) != (secret is None):
        raise ConfigError(
            "S3 credentials are incomplete: set both an access key "
            f"({' / '.join(ACCESS_VARS)}) and a secret key ({' / '.join(SECRET_VARS)}), or neither "
            "for anonymous access"
        )
    ca = _first(env, CA_VARS)
    if ca is not None and not os.path.isfile(ca[1]):
        raise ConfigError(f"{ca[0]}={ca[1]!r} is not a file: point it at a PEM CA bundle")
    part_size = parse_size(env.get("SEER_S3_PART_SIZE", "") or str(DEFAULT_PART_SIZE), "SEER_S3_PART_SIZE")
    if not MIN_PART <= part_size <= MAX_PART:
        raise ConfigError(f"SEER_S3_PART_SIZE={part_size} bytes is outside S3's limits: use 5MiB to 5GiB")
    token, region = _first(env, TOKEN_VARS), _first(env, REGION_VARS)
    return S3Settings(
        endpoint=endpoint,
        secure=secure,
        access_key=access[1] if access else None,
        secret_key=secret[1] if secret else None,
        session_token=token[1] if token else None,
        region=region[1] if region else DEFAULT_REGION,
        ca_bundle=ca[1] if ca else certifi.where(),
        verify=_bool(env, "SEER_S3_VERIFY", True),
        timeout_s=_number(env, "SEER_S3_TIMEOUT", DEFAULT_TIMEOUT_S, 0.1),
        retry_s=_number(env, "SEER_S3_RETRY_SECONDS", DEFAULT_RETRY_S, 0.0),
        part_size=part_size,
        concurrency=int(_number(env, "SEER_S3_CONCURRENCY", DEFAULT_CONCURRENCY, 1)),
    )


# --------------------------------------------------------------------------- error classification


def _status(exc: BaseException) -> int:
    if isinstance(exc, S3Error):
        return exc.response.status if exc.response is not None else 0
    if isinstance(exc, ServerError):
        return exc.status_code
    if isinstance(exc, InvalidResponseError):
        return int(getattr(exc, "_code", 0) or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: connection trouble, timeouts, 5xx, 429 and throttling codes."""
    if isinstance(exc, MaxRetryError):
        return exc.reason is None or is_transient(exc.reason)
    if isinstance(exc, SSLError):
        return False
    if isinstance(exc, S3Error) and exc.code in TRANSIENT_CODES:
        return True
    if isinstance(exc, (S3Error, ServerError, InvalidResponseError)):
        status = _status(exc)
        return status >= 500 or status == 429
    return isinstance(
        exc,
        (
            ProtocolError,
            Urllib3Timeout,
            NewConnectionError,
            IncompleteRead,
            http.client.IncompleteRead,
            ConnectionError,
            socket.timeout,
        ),
    )


def _is_tls_error(exc: BaseException) -> bool:
    return isinstance(exc, SSLError) or (isinstance(exc, MaxRetryError) and isinstance(exc.reason, SSLError))


def _summary(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:300]}"


# --------------------------------------------------------------------------- client cache


class S3Store:
    """A minio client plus the retry / error-translation policy of one configuration."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        timeout = urllib3.Timeout(connect=min(settings.timeout_s, 10.0), read=settings.timeout_s)
        http = urllib3.PoolManager(
            timeout=timeout,
            maxsize=max(10, 2 * settings.concurrency),
            cert_reqs="CERT_REQUIRED" if settings.verify else "CERT_NONE",
            ca_certs=settings.ca_bundle,
            retries=False,
        )
        self.client = Minio(
            endpoint=settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            session_token=settings.session_token,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        self._buckets_seen: set[str] = set()

    # -- retry + error translation ------------------------------------------------------------

    def call(self, what: str, loc: Location, fn: Callable[[], T]) -> T:
        """Run `fn` (one S3 request), retrying transient failures; raise StorageError on failure."""
        deadline = time.monotonic() + self.settings.retry_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
                self._buckets_seen.add(loc.bucket)
                return result
            except Exception as exc:
                if not is_transient(exc):
                    translated = self.translate(exc, what, loc)
                    if translated is exc:
                        raise
                    raise translated from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageError(
                        f"{what} {loc.uri} failed after {attempt} attempt(s) over "
                        f"{self.settings.retry_s:g} s at {self.settings.endpoint_url}: {_summary(exc)}. "
                        "The endpoint is unreachable or overloaded: check SEER_S3_ENDPOINT and the "
                        "server, or allow more time with SEER_S3_RETRY_SECONDS"
                    ) from exc
                ceiling = min(10.0, 0.1 * 2 ** min(attempt, 10))
                time.sleep(min(remaining, random.uniform(ceiling / 2, ceiling)))

    def translate(self, exc: Exception, what: str, loc: Location) -> Exception:
        """Map a minio / urllib3 error to a SeerError naming the object and the fix."""
        where = f"at endpoint {self.settings.endpoint_url}"
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket" or (exc.code == "NoSuchKey" and not self.bucket_exists(loc.bucket)):
                return NotFoundError(
                    f"bucket '{loc.bucket}' does not exist {where} ({what} {loc.uri}): "
                    f"create it (e.g. `aws s3 mb s3://{loc.bucket}`) or fix the URI"
                )
            if exc.code == "NoSuchKey":
                return NotFoundError(
                    f"no object at {loc.uri} (key '{loc.key}' in bucket '{loc.bucket}' {where}): "
                    "check the key, or that the step that writes it has run"
                )
            if exc.code in AUTH_CODES or _status(exc) == 403:
                return StorageError(
                    f"access denied: {what} {loc.uri} {where} ({exc.code}): check the credentials in "
                    "SEER_S3_ACCESS_KEY / SEER_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY; in Kubeflow the secret mlpipeline-minio-artifact) and "
                    "the bucket policy"
                )
            if exc.code == "PreconditionFailed":
                return StorageError(f"{loc.uri} changed while it was being read: open it again")
            return StorageError(f"{what} {loc.uri} failed {where}: {_summary(exc)}")
        if _is_tls_error(exc):
            return StorageError(
                f"TLS failure talking to {self.settings.endpoint_url} ({what} {loc.uri}): {exc}. "
                "Point SEER_S3_CA_BUNDLE at the server's CA, use an http:// endpoint if the server "
                "has no TLS, or set SEER_S3_VERIFY=false for a self-signed test server"
            )
        if isinstance(exc, ValueError):
            return StorageError(f"invalid S3 location {loc.uri}: {exc}")
        if isinstance(exc, (S3Error, ServerError, InvalidResponseError, HTTPError)):
            return StorageError(f"{what} {loc.uri} failed {where}: {_summary(exc)}")
        return exc

    def bucket_exists(self, bucket: str) -> bool:
        """Whether `bucket` exists (cached once seen; an unanswerable check counts as existing)."""
        if bucket in self._buckets_seen:
            return True
        try:
            found = self.client.bucket_exists(bucket_name=bucket)
        except Exception:
            return True
        if found:
            self._buckets_seen.add(bucket)
        return found

    # -- operations -----------------------------------------------------------------------------

    def stat(self, loc: Location) -> ObjectInfo:
        _need_key(loc)
        obj = self.call(
            "stat", loc, lambda: self.client.stat_object(bucket_name=loc.bucket, object_name=loc.key)
        )
        mtime = obj.last_modified.timestamp() if obj.last_modified else 0.0
        return ObjectInfo(uri=loc.uri, size=obj.size or 0, mtime=mtime, etag=(obj.etag or "").strip('"'))

    def exists(self, loc: Location) -> bool:
        try:
            self.stat(loc)
        except NotFoundError:
            if self.bucket_exists(loc.bucket):
                return False
            raise
        return True

    def list(self, loc: Location, recursive: bool) -> list[ObjectInfo]:
        base = loc.key.strip("/")
        prefix = f"{base}/" if base else None

        def run() -> list[ObjectInfo]:
            out = []
            for obj in self.client.list_objects(bucket_name=loc.bucket, prefix=prefix, recursive=recursive):
                name = obj.object_name or ""
                uri = f"{loc.scheme}://{loc.bucket}/{name.rstrip('/')}"
                if obj.is_dir:
                    out.append(ObjectInfo(uri=uri, size=0, mtime=0.0, etag=None, is_dir=True))
                elif not name.endswith("/"):  # skip zero-byte "folder" markers made by consoles
                    mtime = obj.last_modified.timestamp() if obj.last_modified else 0.0
                    out.append(
                        ObjectInfo(uri=uri, size=obj.size or 0, mtime=mtime, etag=(obj.etag or "").strip('"'))
                    )
            return out

        return sorted(self.call("list", loc, run), key=lambda info: info.uri)

    def delete(self, loc: Location) -> None:
        _need_key(loc)
        self.call(
            "delete", loc, lambda: self.client.remove_object(bucket_name=loc.bucket, object_name=loc.key)
        )

    def delete_prefix(self, loc: Location) -> int:
        keys = [info.uri.split("/", 3)[3] for info in self.list(loc, recursive=True)]
        for start in range(0, len(keys), 1000):
            batch = [DeleteObject(key) for key in keys[start : start + 1000]]

            def run(batch: list[DeleteObject] = batch) -> None:
                errors = list(self.client.remove_objects(bucket_name=loc.bucket, delete_object_list=batch))
                if errors:
                    raise StorageError(
                        f"could not delete {len(errors)} object(s) under {loc.uri}, e.g. "
                        f"{errors[0].name}: {errors[0].code} {errors[0].message}"
                    )

            self.call("delete", loc, run)
        return len(keys)

    def copy(self, src: Location, dst: Location) -> None:
        """Server-side copy (same endpoint); objects over 5 GiB are copied part by part."""
        self.stat(src)  # so that a missing source is reported as the source
        _need_key(dst)
        self.call(
            f"copy {src.uri} to",
            dst,
            lambda: self.client.copy_object(
                bucket_name=dst.bucket,
                object_name=dst.key,
                source=CopySource(bucket_name=src.bucket, object_name=src.key),
            ),
        )

    def open_read(self, loc: Location) -> io.BufferedReader:
        _need_key(loc)
        return io.BufferedReader(S3Reader(self, loc), buffer_size=MIB)

    def open_write(self, loc: Location, size_hint: int | None = None) -> S3Writer:
        _need_key(loc)
        return S3Writer(self, loc, self.part_size_for(size_hint))

    def part_size_for(self, size: int | None) -> int:
        """The configured part size, raised when `size` would otherwise need over 10,000 parts."""
        if size is None:
            return self.settings.part_size
        if size > MAX_OBJECT:
            raise StorageError(f"{size} bytes exceeds S3's 5 TiB object limit: split the file")
        needed = math.ceil(size / MAX_PARTS / MIB) * MIB
        return max(self.settings.part_size, needed)


def _need_key(loc: Location) -> None:
    if not loc.key or loc.key.endswith("/"):
        raise StorageError(
            f"{loc.uri} names a bucket or folder, not an object: add an object key, "
            f"e.g. {loc.scheme}://{loc.bucket}/path/to/file"
        )


_lock = threading.Lock()
_stores: dict[tuple[int, S3Settings], S3Store] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _stores.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def store() -> S3Store:
    """The S3Store for the current environment, created once per configuration and process."""
    settings = settings_from_env()
    key = (os.getpid(), settings)
    with _lock:
        found = _stores.get(key)
        if found is None:
            found = _stores[key] = S3Store(settings)
        return found


# --------------------------------------------------------------------------- streaming read


class S3Reader(io.RawIOBase):
    """Seekable streaming reader: one ranged GET at a time, resumed at the current offset after a
    transient failure; an object replaced mid-read is detected (If-Match) instead of mixed."""

    def __init__(self, s3: S3Store, loc: Location) -> None:
        super().__init__()
        self._s3, self._loc = s3, loc
        self._pos = 0
        self._etag: str | None = None
        self._resp: HTTPResponse | None = None
        self._resp = s3.call("read", loc, self._request)
        length = self._resp.headers.get("Content-Length")
        self.size = int(length) if length is not None else s3.stat(loc).size
        self._etag = self._resp.headers.get("ETag")

    def _request(self) -> HTTPResponse:
        headers = {"If-Match": self._etag} if self._etag else None
        return self._s3.client.get_object(
            bucket_name=self._loc.bucket, object_name=self._loc.key, offset=self._pos, request_headers=headers
        )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target} in {self._loc.uri}")
        if target != self._pos:
            self._drop()
            self._pos = target
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self.size or len(buffer) == 0:
            return 0
        want = min(len(buffer), self.size - self._pos)
        got = self._s3.call("read", self._loc, lambda: self._read_some(memoryview(buffer)[:want]))
        self._pos += got
        return got

    def _read_some(self, view: memoryview) -> int:
        try:
            if self._resp is None:
                self._resp = self._request()
            data = self._resp.read(len(view))
            if not data:
                raise ProtocolError(f"connection closed at byte {self._pos} of {self.size}")
        except Exception:
            self._drop()
            raise
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(8 * MIB):
            chunks.append(chunk)
        return b"".join(chunks)

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp.release_conn()
            self._resp = None

    def close(self) -> None:
        if not self.closed:
            self._drop()
        super().close()


# --------------------------------------------------------------------------- atomic upload


class S3Writer(AtomicWriter):
    """Buffers up to one part; small objects go up in one PUT on close, larger ones as a multipart
    upload whose parts upload in parallel while writing and which is completed on close or aborted."""

    def __init__(self, s3: S3Store, loc: Location, part_size: int) -> None:
        super().__init__(loc.uri)
        self._s3, self._loc, self._part_size = s3, loc, part_size
        self._content_type = mimetypes.guess_type(loc.key)[0] or "application/octet-stream"
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._parts: list[Future[str]] = []

    def _write(self, data: memoryview) -> None:
        while data:
            room = self._part_size - len(self._buf)
            self._buf += data[:room]
            data = data[room:]
            if len(self._buf) == self._part_size:
                part = bytes(self._buf)
                self._buf.clear()
                self._submit(part)

    def _submit(self, part: bytes) -> None:
        s3, loc = self._s3, self._loc
        if self._upload_id is None:
            self._upload_id = s3.call(
                "start upload of",
                loc,
                lambda: s3.client._create_multipart_upload(
                    bucket_name=loc.bucket, object_name=loc.key, headers={"Content-Type": self._content_type}
                ),
            )
            self._pool = ThreadPoolExecutor(
                max_workers=s3.settings.concurrency, thread_name_prefix="seer-s3-part"
            )
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"{loc.uri} is larger than {MAX_PARTS} parts of {self._part_size} bytes: "
                "raise SEER_S3_PART_SIZE"
            )
        pending = [f for f in self._parts if not f.done()]
        if len(pending) >= s3.settings.concurrency:
            wait(pending, return_when=FIRST_COMPLETED)
        for done in self._parts:
            if done.done() and done.exception() is not None:
                raise done.exception()  # type: ignore[misc]
        assert self._pool is not None
        self._parts.append(self._pool.submit(self._upload_part, number, part))

    def _upload_part(self, number: int, data: bytes) -> str:
        s3, loc, upload_id = self._s3, self._loc, self._upload_id
        return s3.call(
            f"upload part {number} of",
            loc,
            lambda: s3.client._upload_part(
                bucket_name=loc.bucket,
                object_name=loc.key,
                data=data,
                headers=None,
                upload_id=upload_id,
                part_number=number,
            ),
        )

    def _commit(self) -> None:
        s3, loc = self._s3, self._loc
        if self._upload_id is None:
            data = bytes(self._buf)
            s3.call(
                "upload",
                loc,
                lambda: s3.client.put_object(
                    bucket_name=loc.bucket,
                    object_name=loc.key,
                    data=io.BytesIO(data),
                    length=len(data),
                    part_size=max(MIN_PART, len(data)),  # one PUT, not minio's own multipart
                    content_type=self._content_type,
                ),
            )
            return
        if self._buf:
            self._submit(bytes(self._buf))
            self._buf.clear()
        parts = [Part(number, future.result()) for number, future in enumerate(self._parts, start=1)]
        self._shutdown_pool()
        self._complete(parts)

    def _complete(self, parts: list[Part]) -> None:
        s3, loc, upload_id = self._s3, self._loc, self._upload_id
        assert upload_id is not None
        try:
            s3.call(
                "complete upload of",
                loc,
                lambda: s3.client._complete_multipart_upload(
                    bucket_name=loc.bucket, object_name=loc.key, upload_id=upload_id, parts=parts
                ),
            )
        except StorageError as exc:
            # A retried CompleteMultipartUpload whose first try succeeded answers NoSuchUpload:
            # accept it when the object now there carries exactly our multipart ETag.
            cause = exc.__cause__
            if not (isinstance(cause, S3Error) and cause.code == "NoSuchUpload"):
                raise
            if s3.stat(loc).etag != _multipart_etag(parts):
                raise
        self._upload_id = None

    def _abort(self) -> None:
        self._buf = bytearray()
        for future in self._parts:
            future.cancel()
        self._shutdown_pool()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            s3, loc = self._s3, self._loc
            try:
                s3.call(
                    "abort upload of",
                    loc,
                    lambda: s3.client._abort_multipart_upload(
                        bucket_name=loc.bucket, object_name=loc.key, upload_id=upload_id
                    ),
                )
            except StorageError as exc:
                # Nothing became visible either way; a bucket lifecycle rule reclaims stray parts.
                log.warning("could not abort the multipart upload of %s: %s", loc.uri, exc)

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _multipart_etag(parts: list[Part]) -> str:
    digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in parts), usedforsecurity=False)
    return f"{digest.hexdigest()}-{len(parts)}"
