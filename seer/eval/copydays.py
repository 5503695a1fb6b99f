"""`seer eval import-copydays`: the INRIA Copydays folders → the manifests `seer eval copy-detection` reads.

Copydays as distributed (and as VISSL's `CopyDaysDataset` / DINO's `eval_copy_detection.py` read it):
`ROOT/original/*.jpg` (157 originals, the database), `ROOT/strong/*.jpg` (229 strong edits),
`ROOT/jpegqual/{3,5,8,10,15,20,30,50,75}/*.jpg` and `ROOT/crops/{10,15,20,30,40,50,60,70,80}/*.jpg`
(157 each). Names are image numbers (`200000.jpg`); a query is a copy of every original whose number
// 100 equals its own (VISSL `_is_query_database_match`). Splits take VISSL's names: `original`,
`strong`, `jpegqual_Q`, `crops_P`.

Distractors (SEER/DINO: 10k YFCC100M images) and the whitening set (DINO: 20k other YFCC100M
images) are a folder of images or a list file (one path a line, relative to the list's folder).
"""

from __future__ import annotations

import posixpath
import re

from seer import storage
from seer.errors import ConfigError

JPEG_QUALITIES = (3, 5, 8, 10, 15, 20, 30, 50, 75)
CROP_PERCENTS = (10, 15, 20, 30, 40, 50, 60, 70, 80)
QUERY_FOLDERS = {
    "original": "original",
    "strong": "strong",
    **{f"jpegqual_{q}": f"jpegqual/{q}" for q in JPEG_QUALITIES},
    **{f"crops_{p}": f"crops/{p}" for p in CROP_PERCENTS},
}
_IMAGE = re.compile(r"\.(jpe?g|png|webp|bmp)$", re.IGNORECASE)
_NUMBER = re.compile(r"(\d+)\.jpe?g$", re.IGNORECASE)


def _images(folder: str) -> list[str]:
    """Image URIs directly in `folder`, sorted by name."""
    return sorted(
        info.uri
        for info in storage.list(folder, recursive=False)
        if not info.is_dir and _IMAGE.search(info.uri)
    )


def image_list(uri: str) -> list[str]:
    """A folder of images or a list file (one path a line; relative paths from the list's folder)."""
    if storage.exists(uri):
        base = posixpath.dirname(uri) or "."
        lines = [ln.strip() for ln in storage.read_text(uri).splitlines() if ln.strip()]
        return [ln if "://" in ln or ln.startswith("/") else storage.join(base, ln) for ln in lines]
    found = _images(uri)
    if not found:
        raise ConfigError(f"{uri} is neither a list file nor a folder of images; give one of them")
    return found


def _number(uri: str) -> int:
    match = _NUMBER.search(uri)
    if not match:
        raise ConfigError(
            f"{uri}: Copydays names are image numbers (e.g. 200000.jpg); is ROOT the Copydays folder?"
        )
    return int(match[1])


def _csv(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"


def import_copydays(
    root: str,
    output: str,
    distractors: str | None = None,
    whitening: str | None = None,
    max_distractors: int = 10000,
) -> dict[str, str | int]:
    """Write `queries.csv` (query,reference,split), `database.csv` (the originals) and, when given,
    `distractors.csv` (the first `max_distractors`) and `whitening.csv` under `output`; returns their
    URIs and counts. Missing split folders fail, naming the folder."""
    originals = _images(storage.join(root, "original"))
    if not originals:
        raise ConfigError(
            f"{root}/original has no images; ROOT must hold Copydays' original/, strong/, jpegqual/, crops/"
        )
    by_group: dict[int, list[str]] = {}
    for uri in originals:
        by_group.setdefault(_number(uri) // 100, []).append(uri)
    rows: list[str] = []
    counts: dict[str, int] = {}
    for split, folder in QUERY_FOLDERS.items():
        queries = _images(storage.join(root, folder))
        if not queries:
            raise ConfigError(f"{root}/{folder} has no images; the Copydays layout needs every split folder")
        counts[split] = len(queries)
        for q in queries:
            refs = by_group.get(_number(q) // 100)
            if not refs:
                raise ConfigError(f"{q} has no original with the same number // 100 in {root}/original")
            rows += [f"{q},{ref},{split}" for ref in refs]
    out: dict[str, str | int] = {
        "queries": storage.join(output, "queries.csv"),
        "database": storage.join(output, "database.csv"),
        "originals": len(originals),
        **{f"queries_{split}": n for split, n in counts.items()},
    }
    lists = {"database": originals}
    if distractors:
        lists["distractors"] = image_list(distractors)[:max_distractors]
    if whitening:
        lists["whitening"] = image_list(whitening)
        shared = set(lists["whitening"]) & {*originals, *lists.get("distractors", [])}
        if shared:
            raise ConfigError(
                f"{len(shared)} whitening images are also in the database (e.g. {sorted(shared)[0]}); "
                "the whitening set must be separate"
            )
    for name, uris in lists.items():
        out[name] = storage.join(output, f"{name}.csv")
        out[f"{name}_images"] = len(uris)
        storage.write_text(str(out[name]), _csv("path", uris))
    storage.write_text(str(out["queries"]), _csv("query,reference,split", rows))  # written last: complete
    return out
