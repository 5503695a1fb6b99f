"""List a huge S3 prefix with many concurrent requests, in the same byte order as one listing.

One ListObjects stream returns ~5k keys/s (1000-key pages, one page in flight), so 1B keys take two
and a half days. The keys under a prefix split into disjoint ranges that sort one after the other:
the objects directly at a level and the sub-prefixes ("folders") of that level, merged by name. A key
under sub-prefix ``x/`` sorts after every name at that level that is smaller than ``x/`` and before
every larger one, so listing each range separately and concatenating the results in range order gives
exactly the byte order a single recursive listing returns. Levels are expanded breadth-first (with the
delimiter ``/``) until there are at least ``ranges_per_worker × workers`` ranges or ``max_depth`` is
reached; a level with more than ``max_level_objects`` direct objects is not expanded (a flat prefix:
it is listed as one range). The ranges are then listed by ``workers`` threads with a bounded window of
finished-but-not-yet-yielded ranges, so memory holds at most that window's keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

LIST_WORKERS = 32  # concurrent ListObjects streams
RANGES_PER_WORKER = 4  # ranges per worker, so one slow range does not hold the others back
MAX_DEPTH = 3  # levels of sub-prefixes expanded
MAX_LEVEL_OBJECTS = 10_000  # a level with more direct objects is listed as one range

# (key, version) of one object; a lister lists a prefix recursively or one level (objects, sub-prefixes)
Entry = tuple[str, str]
RecursiveLister = Callable[[str], Iterator[Entry]]
LevelLister = Callable[[str], Iterator[tuple[str, str | None]]]  # (name, version; None for a sub-prefix)


@dataclass(frozen=True)
class _Range:
    """A sub-prefix listed recursively, or one object found while expanding a level."""

    name: str
    version: str | None = None  # set for an object
    flat: bool = False  # a sub-prefix too flat to split: listed as one range, never read level-wise again

    @property
    def is_prefix(self) -> bool:
        return self.version is None


def _expand(prefix: str, list_level: LevelLister, max_level_objects: int) -> list[_Range] | None:
    """The ranges one level below ``prefix`` in byte order, or None when the level is too flat to split."""
    found: list[_Range] = []
    objects = 0
    for name, version in list_level(prefix):
        if name == prefix:  # a zero-byte "folder" marker named like the prefix (S3 lists it as a sub-prefix)
            continue
        if version is not None:
            objects += 1
            if objects > max_level_objects:
                return None
        found.append(_Range(name, version))
    return sorted(found, key=lambda r: r.name.encode())


@dataclass(frozen=True)
class Split:
    """How a prefix is split into ranges and how many streams list them (see the module doc)."""

    workers: int = LIST_WORKERS
    ranges_per_worker: int = RANGES_PER_WORKER
    max_depth: int = MAX_DEPTH
    max_level_objects: int = MAX_LEVEL_OBJECTS

    @property
    def want(self) -> int:
        """Sub-prefix ranges to aim for before expanding stops."""
        return self.workers * self.ranges_per_worker


def key_ranges(prefix: str, list_level: LevelLister, split: Split = Split()) -> list[_Range]:
    """Disjoint ranges covering every key under ``prefix``, in byte order (see the module doc)."""
    ranges = [_Range(prefix)]
    for _ in range(split.max_depth):
        if sum(r.is_prefix for r in ranges) >= split.want:
            break
        expanded: list[_Range] = []
        changed = False
        for r in ranges:
            if not r.is_prefix or r.flat:
                expanded.append(r)
                continue
            below = _expand(r.name, list_level, split.max_level_objects)
            if below is None:
                expanded.append(_Range(r.name, flat=True))
            else:
                expanded.extend(below)
                changed = True
        ranges = expanded
        if not changed:
            break
    return ranges


def list_parallel(
    prefix: str, list_recursive: RecursiveLister, list_level: LevelLister, split: Split = Split()
) -> Iterator[Entry]:
    """Every (key, version) under ``prefix`` in byte order, listed by ``split.workers`` concurrent streams."""
    workers = split.workers
    if workers <= 1:
        yield from list_recursive(prefix)
        return
    ranges = key_ranges(prefix, list_level, split)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seer-list") as pool:
        window: deque[tuple[_Range, Future | None]] = deque()
        pending = iter(ranges)

        def fill() -> None:
            while len(window) < 2 * workers:
                r = next(pending, None)
                if r is None:
                    return
                window.append(
                    (r, pool.submit(lambda p=r.name: list(list_recursive(p))) if r.is_prefix else None)
                )

        fill()
        try:
            while window:
                r, future = window.popleft()
                if future is None:
                    yield r.name, r.version
                else:
                    yield from future.result()
                fill()
        finally:
            for _, future in window:
                if future is not None:
                    future.cancel()
