"""Parallel listing of an S3 prefix by key ranges (seer.data.parallel_listing): the same keys, in the same
byte order, with the same versions as one recursive listing.

S3 facts relied on (ListObjectsV2, AWS docs "Listing object keys" / "Organizing objects using prefixes"):
keys are returned in UTF-8 binary order; with `delimiter=/` a page holds the level's objects
(`Contents`) and its sub-prefixes (`CommonPrefixes`, each ending in the delimiter), and every key under
a common prefix starts with it. moto's server implements the same listing.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest

from seer.data.listing import iter_objects
from seer.data.parallel_listing import Split, key_ranges, list_parallel

# Names whose byte order is easy to get wrong: "a.jpg" < "a/…" < "a0.jpg" ('.' 0x2e, '/' 0x2f, '0' 0x30),
# a deep tree, a flat folder, upper case before lower case, and non-ASCII.
KEYS = sorted(
    [
        "a.jpg",
        "a/1.jpg",
        "a/2/x.jpg",
        "a0.jpg",
        "B/z.jpg",
        "b/c/d/e.jpg",
        "b/c/d/f.jpg",
        "b/c.jpg",
        "b/ü.jpg",
        *(f"flat/{i:04d}.jpg" for i in range(60)),
        *(f"tree/{i:02d}/{j}.jpg" for i in range(12) for j in range(5)),
        "z.jpg",
    ],
    key=str.encode,
)


class FakeBucket:
    """An in-memory S3 listing: recursive, and one level with the delimiter '/'; counts calls per thread."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.threads: set[int] = set()
        self.levels: list[str] = []  # prefixes listed level-wise, in call order

    def recursive(self, prefix: str) -> Iterator[tuple[str, str]]:
        self.threads.add(threading.get_ident())
        for k in self.keys:
            if k.startswith(prefix):
                yield k, f"{len(k)}:etag"

    def level(self, prefix: str) -> Iterator[tuple[str, str | None]]:
        self.levels.append(prefix)
        seen: set[str] = set()
        for k in self.keys:
            if not k.startswith(prefix):
                continue
            rest = k[len(prefix) :]
            if "/" in rest:
                sub = prefix + rest.split("/", 1)[0] + "/"
                if sub not in seen:
                    seen.add(sub)
                    yield sub, None
            else:
                yield k, f"{len(k)}:etag"


@pytest.mark.parametrize("workers", [1, 2, 8])
@pytest.mark.parametrize("max_level_objects", [5, 10_000])
def test_parallel_listing_equals_one_listing(workers: int, max_level_objects: int) -> None:
    bucket = FakeBucket(KEYS)
    got = list(
        list_parallel(
            "", bucket.recursive, bucket.level, Split(workers=workers, max_level_objects=max_level_objects)
        )
    )
    assert got == list(bucket.recursive(""))
    assert [k for k, _ in got] == KEYS


def test_ranges_split_folders_keep_flat_ones_whole_and_cover_everything_in_order() -> None:
    bucket = FakeBucket(KEYS)
    ranges = key_ranges("", bucket.level, Split(workers=4, ranges_per_worker=4, max_level_objects=4))
    names = [r.name for r in ranges]
    assert names == sorted(names, key=str.encode)
    assert "flat/" in names  # 60 direct objects > 4: listed as one range, not expanded
    assert bucket.levels.count("flat/") == 1  # and its level is not read again at the next depth
    assert [r.name for r in ranges if r.name.startswith("tree/")] == [f"tree/{i:02d}/" for i in range(12)]
    covered = [
        k for r in ranges for k in ([r.name] if not r.is_prefix else [k for k, _ in bucket.recursive(r.name)])
    ]
    assert covered == KEYS


def test_ranges_are_listed_concurrently() -> None:
    bucket = FakeBucket(KEYS)
    assert len(
        list(list_parallel("", bucket.recursive, bucket.level, Split(workers=8, max_level_objects=4)))
    ) == len(KEYS)
    assert len(bucket.threads) > 1


def test_s3_prefix_lists_the_same_with_32_streams_as_with_one(s3_server, s3_bucket: str) -> None:
    """Against moto's S3 server: the same URIs, order and size:etag versions; folder markers skipped."""
    client = s3_server.client
    for i, key in enumerate(KEYS):
        data = f"image {i}".encode() * (i + 1)
        client.put_object(
            bucket_name=s3_bucket, object_name=f"corpus/{key}", data=io.BytesIO(data), length=len(data)
        )
    client.put_object(
        bucket_name=s3_bucket, object_name="corpus/tree/", data=io.BytesIO(b""), length=0
    )  # a marker
    one = list(iter_objects(f"s3://{s3_bucket}/corpus", workers=1))
    many = list(iter_objects(f"s3://{s3_bucket}/corpus", workers=32))
    assert many == one
    assert [uri for uri, _ in many] == [f"s3://{s3_bucket}/corpus/{k}" for k in KEYS]
    assert all(version.split(":")[1] for _, version in many)  # ETags came with the pages
