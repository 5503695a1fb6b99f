"""Evaluation datasets from any storage URI: image folders, CSV/JSONL manifests, webdataset shards.

Layouts (`fmt="auto"` picks one from the URI):

- **folder**: `ROOT/<class>/<image>` (classification) or any images below ROOT (`task="images"`).
- **csv** / **jsonl** manifest: one row per image; columns depend on the task — `path,label`
  (classification), `path,lat,lon` (geo), `path,label,group` (grouped), `path` (images); copy
  detection pairs are `query,reference[,split]` (see `load_pairs`). CSV may omit the header when
  the columns come in that order. Relative paths are relative to the manifest's folder.
- **shards**: a `manifest.json` listing webdataset tars whose members are `<key>.jpg` (or another
  image extension) + `<key>.json` carrying the row's fields (`label`, `lat`, `lon`, `group`, ...).

Every row is validated before any work starts. Bad rows (missing file, empty or unknown label,
non-numeric or out-of-range coordinates, ...) are collected with their line numbers; more than the
`max_bad_rows` policy allows stops the run with a DatasetError listing the first ones. Within the
policy they are dropped and recorded in `EvalDataset.bad_rows`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from seer import storage
from seer.data.shard import shard_uris
from seer.errors import SeerError

Task = Literal["classification", "geo", "grouped", "images"]
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "classification": ("path", "label"),
    "geo": ("path", "lat", "lon"),
    "grouped": ("path", "label", "group"),
    "images": ("path",),
}
PAIR_COLUMNS = ("query", "reference", "split")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
SHOW_PROBLEMS = 10
_IO_THREADS = 16


class DatasetError(SeerError, ValueError):
    """The dataset cannot be used as given; `problems` lists every bad row found."""

    def __init__(self, message: str, problems: Sequence[BadRow] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class BadRow:
    """One rejected row: where it is (`manifest:line`, or a path) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and the fields its task uses (unused fields keep their defaults)."""

    key: str  # stable identifier: the path relative to the dataset root, or the shard key
    uri: str  # the image file, or the shard holding it
    where: str  # for messages: `manifest.csv:12`, `shard.tar:<key>` or the file URI
    member: str | None = None  # tar member name when the image lives in a shard
    label: int = -1
    lat: float = math.nan
    lon: float = math.nan
    group: str = ""
    split: str = ""


@dataclass
class EvalDataset:
    """Validated samples plus what identifies the set (`sha256()`) and what was dropped."""

    uri: str
    fmt: str
    task: str
    samples: list[Sample]
    classes: list[str] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    _sha256: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def coordinates(self) -> np.ndarray:
        """(N, 2) latitude, longitude in degrees."""
        return np.array([(s.lat, s.lon) for s in self.samples], dtype=np.float64).reshape(-1, 2)

    @property
    def groups(self) -> list[str]:
        return [s.group for s in self.samples]

    def sha256(self) -> str:
        """Content hash: every sample's fields and image bytes, plus the class list (computed once)."""
        if self._sha256 is None:
            digest = hashlib.sha256(json.dumps({"task": self.task, "classes": self.classes}).encode())
            with ThreadPoolExecutor(_IO_THREADS) as pool:
                image_hashes = pool.map(
                    lambda s: hashlib.sha256(read_image_bytes(s)).hexdigest(), self.samples
                )
                for sample, image_hash in zip(self.samples, image_hashes, strict=True):
                    row = [sample.key, sample.label, sample.lat, sample.lon, sample.group, sample.split]
                    digest.update(json.dumps([*row, image_hash]).encode())
            self._sha256 = digest.hexdigest()
        return self._sha256

    def describe(self) -> dict:
        """What a metrics report records about this set."""
        return {
            "uri": self.uri,
            "format": self.fmt,
            "sha256": self.sha256(),
            "samples": len(self.samples),
            "classes": len(self.classes),
            "bad_rows": len(self.bad_rows),
        }


def parse_max_bad_rows(policy: str | int | float) -> tuple[int | None, float | None]:
    """`"0"`/`5` → at most that many bad rows; `"2%"` → at most that share of rows."""
    text = str(policy).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share <= 1:
                raise ValueError
            return None, share
        count = int(text)
        if count < 0:
            raise ValueError
        return count, None
    except ValueError:
        raise DatasetError(
            f"invalid --max-bad-rows {policy!r}: give a row count like 0 or 25, or a percentage like 2%"
        ) from None


def _detect_format(uri: str) -> str:
    lower = uri.lower().rstrip("/")
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".json"):
        return "shards"
    if storage.exists(storage.join(uri, "manifest.json")):
        return "shards"
    return "folder"


def _float(value: object, name: str, low: float, high: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} {value!r} is outside [{low:g}, {high:g}]")
    return number


def _class_sort_key(name: str) -> tuple[int, float, str]:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


class _RowChecker:
    """Turns raw rows into samples, collecting every problem instead of stopping at the first."""

    def __init__(self, task: str, classes: Sequence[str] | None) -> None:
        self.task = task
        self.fixed_classes = list(classes) if classes is not None else None
        self.bad: list[BadRow] = []

    def fields(self, row: dict, where: str) -> dict | None:
        """Validated task fields of `row` (label kept as text), or None after recording why not."""
        out: dict = {}
        try:
            if self.task in ("classification", "grouped"):
                label = str(row.get("label", "") if row.get("label") is not None else "").strip()
                if not label:
                    raise ValueError("empty label")
                if self.fixed_classes is not None and label not in self.fixed_classes:
                    known = ", ".join(self.fixed_classes[:8]) + (
                        " ..." if len(self.fixed_classes) > 8 else ""
                    )
                    raise ValueError(f"unknown label {label!r} (the training set's classes are {known})")
                out["label"] = label
            if self.task == "grouped":
                group = str(row.get("group") or "").strip()
                if not group:
                    raise ValueError("empty group")
                out["group"] = group
            if self.task == "geo":
                out["lat"] = _float(row.get("lat"), "latitude", -90.0, 90.0)
                out["lon"] = _float(row.get("lon"), "longitude", -180.0, 180.0)
            if "split" in row and row["split"] is not None:
                out["split"] = str(row["split"]).strip()
        except ValueError as err:
            self.bad.append(BadRow(where, str(err)))
            return None
        return out

    def classes_for(self, labels: Iterable[str]) -> list[str]:
        if self.fixed_classes is not None:
            return self.fixed_classes
        return sorted(set(labels), key=_class_sort_key)


def _resolve(base_dir: str, path: str) -> str:
    if "://" in path or path.startswith("/"):
        return path
    return storage.join(base_dir, posixpath.normpath(path))


def read_manifest_rows(uri: str, fmt: str, columns: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row dict) for every non-blank row; a broken line becomes a row with `_error`."""
    text = storage.read_bytes(uri).decode("utf-8-sig")
    rows: list[tuple[int, dict]] = []
    if fmt == "jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                value = {"_error": f"invalid JSON ({err}); each line must be one object"}
            rows.append((lineno, value))
        return rows
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for record in reader:
        lineno = reader.line_num
        if not record or all(not cell.strip() for cell in record):
            continue
        cells = [cell.strip() for cell in record]
        if header is None:
            if cells[0] in (columns[0], "path", "query"):
                header = cells
                missing = [c for c in columns if c not in header and c != "split"]
                if missing:
                    raise DatasetError(
                        f"{uri}: header {header} lacks column(s) {missing}; this evaluation needs "
                        f"{', '.join(columns)}"
                    )
                continue
            header = list(columns)
        if len(cells) < len([c for c in header if c != "split"]) or len(cells) > len(header):
            rows.append(
                (lineno, {"_error": f"expected {len(header)} columns ({','.join(header)}), got {len(cells)}"})
            )
            continue
        rows.append((lineno, dict(zip(header, cells, strict=False))))
    return rows


def _check_exists(uris: Sequence[str]) -> list[bool]:
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        return list(pool.map(storage.exists, uris))


def _from_manifest(uri: str, fmt: str, task: str, checker: _RowChecker) -> list[tuple[Sample, dict]]:
    base_dir = posixpath.dirname(uri.rstrip("/")) or "."
    name = posixpath.basename(uri)
    candidates: list[tuple[Sample, dict]] = []
    for lineno, row in read_manifest_rows(uri, fmt, TASK_COLUMNS[task]):
        where = f"{name}:{lineno}"
        if "_error" in row:
            checker.bad.append(BadRow(where, row["_error"]))
            continue
        path = str(row.get("path") or "").strip()
        if not path:
            checker.bad.append(BadRow(where, "empty path"))
            continue
        fields = checker.fields(row, where)
        if fields is None:
            continue
        candidates.append((Sample(key=path, uri=_resolve(base_dir, path), where=where), fields))
    present = _check_exists([s.uri for s, _ in candidates])
    kept = []
    for (sample, fields), ok in zip(candidates, present, strict=True):
        if ok:
            kept.append((sample, fields))
        else:
            checker.bad.append(BadRow(sample.where, f"file not found: {sample.uri}"))
    return kept


def _from_folder(uri: str, task: str, checker: _RowChecker) -> list[tuple[Sample, dict]]:
    root = uri.rstrip("/")
    if task in ("geo", "grouped"):
        raise DatasetError(
            f"{uri}: a folder cannot carry {'coordinates' if task == 'geo' else 'groups'}; give a CSV/JSONL "
            f"manifest with columns {','.join(TASK_COLUMNS[task])}"
        )
    if not storage.exists(root) and not storage.list(root):
        raise DatasetError(f"dataset folder {uri} does not exist or is empty; check the URI")
    out: list[tuple[Sample, dict]] = []
    for info in sorted(storage.list(root, recursive=True), key=lambda i: i.uri):
        rel = info.uri[len(root) :].lstrip("/")
        if info.is_dir or not rel.lower().endswith(IMAGE_EXTENSIONS):
            continue
        parts = rel.split("/")
        row: dict = {}
        if task == "classification":
            if len(parts) < 2:
                checker.bad.append(
                    BadRow(info.uri, "image is not inside a class folder (ROOT/<class>/<image>)")
                )
                continue
            row["label"] = parts[0]
        fields = checker.fields(row, info.uri)
        if fields is not None:
            out.append((Sample(key=rel, uri=info.uri, where=info.uri), fields))
    return out


def _from_shards(uri: str, task: str, checker: _RowChecker) -> list[tuple[Sample, dict]]:
    manifest_uri = uri if uri.lower().endswith(".json") else storage.join(uri, "manifest.json")
    out: list[tuple[Sample, dict]] = []
    for shard_uri, excluded in shard_uris(manifest_uri):
        shard_name = posixpath.basename(shard_uri)
        images: dict[str, str] = {}
        metadata: dict[str, bytes] = {}
        with storage.open(shard_uri, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if ext == "json":
                    metadata[key] = tar.extractfile(member).read()  # type: ignore[union-attr]
                elif f".{ext.lower()}" in IMAGE_EXTENSIONS:
                    images[key] = member.name
        for key in sorted((set(images) | set(metadata)) - excluded):
            where = f"{shard_name}:{key}"
            if key not in images:
                checker.bad.append(BadRow(where, "metadata without an image member"))
                continue
            try:
                row = json.loads(metadata[key]) if key in metadata else {}
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                checker.bad.append(BadRow(where, f"invalid {key}.json ({err})"))
                continue
            fields = checker.fields(row, where)
            if fields is not None:
                out.append((Sample(key=key, uri=shard_uri, where=where, member=images[key]), fields))
    return out


def _row_order(row: BadRow) -> tuple[str, int, str]:
    """Sort key putting `file:12` before `file:100`."""
    name, _, line = row.where.rpartition(":")
    return (name, int(line), "") if line.isdigit() else (row.where, 0, "")


def _enforce_policy(uri: str, total: int, bad: list[BadRow], max_bad_rows: str | int | float) -> None:
    if not bad:
        return
    count, share = parse_max_bad_rows(max_bad_rows)
    allowed = count if count is not None else math.floor((share or 0.0) * total)
    if len(bad) <= allowed:
        return
    bad.sort(key=_row_order)
    shown = "; ".join(str(b) for b in bad[:SHOW_PROBLEMS])
    more = f"; ... and {len(bad) - SHOW_PROBLEMS} more" if len(bad) > SHOW_PROBLEMS else ""
    raise DatasetError(
        f"{uri}: {len(bad)} of {total} rows are unusable (policy allows {allowed}): {shown}{more} — "
        "fix these rows, or pass --max-bad-rows N (or P%) to skip up to that many",
        bad,
    )


def load_dataset(
    uri: str,
    task: Task = "classification",
    *,
    fmt: str = "auto",
    classes: Sequence[str] | None = None,
    max_bad_rows: str | int | float = 0,
) -> EvalDataset:
    """Load and validate an evaluation set; `classes` pins the label order (pass the training set's).

    Raises DatasetError when rows are bad beyond `max_bad_rows`, when nothing usable is left, or
    when a classification set has fewer than two classes.
    """
    if task not in TASK_COLUMNS:
        raise DatasetError(f"unknown dataset task {task!r}; choose one of {', '.join(TASK_COLUMNS)}")
    fmt = _detect_format(uri) if fmt == "auto" else fmt
    checker = _RowChecker(task, classes)
    if fmt in ("csv", "jsonl"):
        rows = _from_manifest(uri, fmt, task, checker)
    elif fmt == "folder":
        rows = _from_folder(uri, task, checker)
    elif fmt == "shards":
        rows = _from_shards(uri, task, checker)
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}; choose auto, folder, csv, jsonl or shards")
    _enforce_policy(uri, len(rows) + len(checker.bad), checker.bad, max_bad_rows)
    if not rows:
        raise DatasetError(f"{uri}: no images found; check the URI and the layout ({fmt})")
    class_list = (
        checker.classes_for(f["label"] for _, f in rows) if task in ("classification", "grouped") else []
    )
    if task in ("classification", "grouped") and classes is None and len(class_list) < 2:
        raise DatasetError(
            f"{uri}: only {len(class_list)} class ({class_list}); classification needs at least 2"
        )
    index = {name: i for i, name in enumerate(class_list)}
    samples = []
    for sample, fields in rows:
        label = index[fields.pop("label")] if "label" in fields else -1
        samples.append(Sample(**{**sample.__dict__, **fields, "label": label}))
    return EvalDataset(uri=uri, fmt=fmt, task=task, samples=samples, classes=class_list, bad_rows=checker.bad)


@dataclass
class CopyDetectionSet:
    """Queries (each with its relevant database keys and split) and the database they rank."""

    queries: EvalDataset
    database: EvalDataset
    relevant: list[frozenset[str]]  # per query: the database keys that are copies of it

    def ground_truth(self) -> np.ndarray:
        """(queries, database) boolean matrix of relevant pairs."""
        column = {s.uri: j for j, s in enumerate(self.database.samples)}
        truth = np.zeros((len(self.queries), len(self.database)), dtype=bool)
        for i, refs in enumerate(self.relevant):
            for ref in refs:
                truth[i, column[ref]] = True
        return truth


def load_pairs(
    pairs_uri: str, database_uri: str | None = None, *, max_bad_rows: str | int | float = 0
) -> CopyDetectionSet:
    """Copy-detection pairs `query,reference[,split]` (CSV or JSONL), and the database to rank.

    Rows sharing a query add references to it; an empty reference marks a query with no copy in
    the database. Without `database_uri` the database is the set of referenced images; with it
    (a manifest or folder of images, distractors included) every reference must be in it.
    """
    fmt = "jsonl" if pairs_uri.lower().endswith((".jsonl", ".ndjson")) else "csv"
    base_dir = posixpath.dirname(pairs_uri) or "."
    name = posixpath.basename(pairs_uri)
    bad: list[BadRow] = []
    order: list[str] = []
    info: dict[str, dict] = {}
    for lineno, row in read_manifest_rows(pairs_uri, fmt, PAIR_COLUMNS):
        where = f"{name}:{lineno}"
        if "_error" in row:
            bad.append(BadRow(where, row["_error"]))
            continue
        query = str(row.get("query") or "").strip()
        if not query:
            bad.append(BadRow(where, "empty query path"))
            continue
        ref = str(row.get("reference") or "").strip()
        split = str(row.get("split") or "all").strip()
        q_uri = _resolve(base_dir, query)
        entry = info.setdefault(q_uri, {"key": query, "where": where, "split": split, "refs": {}})
        if q_uri not in order:
            order.append(q_uri)
        if ref:
            entry["refs"][_resolve(base_dir, ref)] = where
    all_uris = list(order) + [r for q in order for r in info[q]["refs"]]
    present = dict(zip(all_uris, _check_exists(all_uris), strict=True))
    for q in order:
        if not present[q]:
            bad.append(BadRow(info[q]["where"], f"query file not found: {q}"))
        for ref, where in info[q]["refs"].items():
            if not present[ref]:
                bad.append(BadRow(where, f"reference file not found: {ref}"))
    if database_uri is not None:
        database = load_dataset(database_uri, "images", max_bad_rows=max_bad_rows)
    else:
        refs = sorted({r for q in order for r in info[q]["refs"] if present[r]})
        database = EvalDataset(
            uri=pairs_uri, fmt=fmt, task="images", samples=[Sample(key=r, uri=r, where=r) for r in refs]
        )
    in_db = {s.uri for s in database.samples}
    for q in order:
        for ref, where in info[q]["refs"].items():
            if present[ref] and ref not in in_db:
                bad.append(BadRow(where, f"reference {ref} is not in the database {database_uri}"))
    bad_where = {b.where for b in bad}
    kept = [q for q in order if present[q] and not (set(info[q]["refs"].values()) & bad_where)]
    _enforce_policy(pairs_uri, len(order), bad, max_bad_rows)
    if not any(info[q]["refs"] for q in kept):
        raise DatasetError(f"{pairs_uri}: no query has a reference; copy detection needs ground-truth pairs")
    queries = EvalDataset(
        uri=pairs_uri,
        fmt=fmt,
        task="images",
        samples=[
            Sample(key=info[q]["key"], uri=q, where=info[q]["where"], split=info[q]["split"]) for q in kept
        ],
        bad_rows=bad,
    )
    return CopyDetectionSet(queries, database, [frozenset(info[q]["refs"]) for q in kept])


_shard_cache: dict[str, dict[str, bytes]] = {}


def read_image_bytes(sample: Sample) -> bytes:
    """The encoded image of `sample` (the last shard read stays cached in this process)."""
    if sample.member is None:
        return storage.read_bytes(sample.uri)
    if sample.uri not in _shard_cache:
        _shard_cache.clear()
        members: dict[str, bytes] = {}
        with storage.open(sample.uri, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    members[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        _shard_cache[sample.uri] = members
    return _shard_cache[sample.uri][sample.member]


def read_image(sample: Sample, min_size: int | None = None) -> Image.Image:
    """Decode `sample` as RGB; an undecodable image raises DatasetError naming its row.

    `min_size`: JPEGs may be decoded at a reduced power-of-two scale (libjpeg DCT scaling) that
    keeps both sides >= min_size, which is much faster for photos larger than the model input.
    """
    try:
        image = Image.open(io.BytesIO(read_image_bytes(sample)))
        if min_size is not None and image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"{sample.where}: cannot decode image {sample.key} ({err}); replace the file or drop the row"
        ) from None
    return image.convert("RGB")
