"""Turn the released layouts of the SEER benchmarks into the sets `seer eval` reads.

- ImageNet val (`import_imagenet_val`): the flat `ILSVRC2012_val_XXXXXXXX.JPEG` folder and Kaggle's
  `LOC_val_solution.csv` (`ImageId,PredictionString`, the wnid is the first token of
  PredictionString) → `OUT/<wnid>/<image>` (the ImageFolder layout).
- Im2GPS / Im2GPS3k / MP-16 (`import_im2gps`): GeoEstimation's meta CSVs (`IMG_ID,…,LAT,LON,…`,
  e.g. `meta/im2gps_places365.csv`) + the image folder → a `path,lat,lon` manifest; with the
  per-image labels of GeoEstimation's `assign_classes.py` (JSON `{img_path: [class per
  partitioning]}`) a `cell` column too.
- Dollar Street (`import_dollar_street`): VISSL's `metadata_full_dollar_street.json` (a list of
  `{_id, label, country, region, income, url, …}`) + images at `ROOT/<label>/<_id>.<ext>` (the path
  VISSL's geographical-diversity script rebuilds) → `path,label,income,region,country`.
- Casual Conversations (`import_casual_conversations`): the parsed JSON VISSL's fairness
  indicators read (a list of `{age, gender, img_path, skin-type, subject_id}`) →
  `path,gender,age,skin_type,subject_id`.

Each importer's docstring is also its `seer eval import-*` help (summary line, description, `Args:`).
Manifests are written in one atomic write (`seer.storage`); rows whose image is absent are
skipped and counted. The ImageNet folder gets `import.json` last, so an interrupted import never
looks complete.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from seer import storage
from seer.eval.datasets import IMAGE_EXTENSIONS, DatasetError


@dataclass
class ImportResult:
    """Where the set went, how many rows it holds and which source rows were skipped."""

    output: str
    rows: int
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        skipped = f"; {len(self.missing)} without an image (first: {self.missing[0]})" if self.missing else ""
        return f"wrote {self.rows} rows to {self.output}{skipped}"


def _files(root: str) -> dict[str, str]:
    """Relative path → URI of every image under `root`."""
    base = root.rstrip("/")
    out = {}
    for info in storage.list(base, recursive=True):
        rel = info.uri[len(base) :].lstrip("/")
        if not info.is_dir and rel.lower().endswith(IMAGE_EXTENSIONS):
            out[rel] = info.uri
    if not out:
        raise DatasetError(f"{root}: no images found; give the folder the images were extracted into")
    return out


def _write_manifest(output: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    if count == 0:
        raise DatasetError(
            f"nothing to write to {output}: no metadata row has its image; check the image folder"
        )
    storage.write_bytes(output, buffer.getvalue().encode())
    return count


def _relative(manifest: str, image_uri: str) -> str:
    """The image path as the manifest stores it: relative to the manifest's folder when below it."""
    base = posixpath.dirname(manifest.rstrip("/"))
    return image_uri[len(base) + 1 :] if base and image_uri.startswith(base + "/") else image_uri


def _csv_rows(uri: str, needed: Sequence[str]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(storage.read_bytes(uri).decode("utf-8-sig")))
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(
            f"{uri}: lacks column(s) {missing}; expected the released header with {', '.join(needed)}"
        )
    return list(reader)


def import_imagenet_val(images: str, solution: str, output: str) -> ImportResult:
    """ILSVRC2012 val + LOC_val_solution.csv → ImageFolder by wnid

    Copy the flat ILSVRC2012 validation images into OUTPUT/<wnid>/<image> using Kaggle's
    LOC_val_solution.csv (ImageId,PredictionString; the wnid is PredictionString's first token);
    OUTPUT/import.json is written last.

    Args:
        images: folder holding ILSVRC2012_val_*.JPEG
        solution: LOC_val_solution.csv
        output: folder to write OUTPUT/<wnid>/<image> into
    """
    files = {posixpath.splitext(posixpath.basename(rel))[0]: uri for rel, uri in _files(images).items()}
    missing, count = [], 0
    for row in _csv_rows(solution, ("ImageId", "PredictionString")):
        image_id, tokens = row["ImageId"].strip(), row["PredictionString"].split()
        if not tokens or not tokens[0].startswith("n"):
            raise DatasetError(
                f"{solution}: {image_id} has no wnid in PredictionString (expected 'n01751748 x y x y')"
            )
        if image_id not in files:
            missing.append(image_id)
            continue
        source = files[image_id]
        storage.copy(source, storage.join(output, tokens[0], posixpath.basename(source)))
        count += 1
    if count == 0:
        raise DatasetError(f"{images}: none of the images in {solution} is there; check both paths")
    storage.write_json(
        storage.join(output, "import.json"), {"source": images, "labels": solution, "images": count}
    )
    return ImportResult(output, count, missing)


def import_im2gps(
    meta: str,
    images: str,
    output: str,
    cell_labels: str | None = None,
    partitioning: int = 0,
) -> ImportResult:
    """Im2GPS / Im2GPS3k / MP-16 meta CSV → path,lat,lon[,cell] manifest

    Join GeoEstimation's meta CSV (IMG_ID,...,LAT,LON, e.g. im2gps_places365.csv, im2gps3k_places365.csv,
    mp16_places365.csv) with the image folder; with --cell-labels (assign_classes.py JSON) add each image's
    cell class for `seer eval geolocalization --method cells`.

    Args:
        meta: GeoEstimation meta CSV with IMG_ID, LAT, LON columns
        images: folder the images were extracted into
        output: manifest CSV to write
        cell_labels: assign_classes.py output {img_path: [class per partitioning]}
        partitioning: which entry of --cell-labels to use (0 = first partitioning; the order of the
            config's partitionings.files)
    """
    files = _files(images)
    labels = storage.read_json(cell_labels) if cell_labels else None
    if labels is not None and not isinstance(labels, dict):
        raise DatasetError(
            f"{cell_labels}: expected assign_classes.py output, a JSON object {{img_path: [classes]}}"
        )
    missing, rows = [], []
    for row in _csv_rows(meta, ("IMG_ID", "LAT", "LON")):
        image_id = row["IMG_ID"].strip()
        if image_id not in files:
            missing.append(image_id)
            continue
        out = [_relative(output, files[image_id]), row["LAT"].strip(), row["LON"].strip()]
        if labels is not None:
            classes = labels.get(image_id)
            if classes is None:  # GeoEstimation drops images no cell covers
                missing.append(image_id)
                continue
            out.append((classes if isinstance(classes, list) else [classes])[partitioning])
        rows.append(out)
    header = ["path", "lat", "lon"] + (["cell"] if labels is not None else [])
    return ImportResult(output, _write_manifest(output, header, rows), missing)


def _load_list(uri: str, what: str) -> list[dict]:
    entries = storage.read_json(uri)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DatasetError(f"{uri}: expected {what}, a JSON list of objects")
    return entries


def import_dollar_street(metadata: str, images: str, output: str) -> ImportResult:
    """Dollar Street metadata → path,label,income,region,country manifest

    Join VISSL's metadata_full_dollar_street.json (_id, label, country, region, income) with images stored
    as IMAGES/<label>/<_id>.<ext>, for `seer eval fairness --indicator geographic`.

    Args:
        metadata: metadata_full_dollar_street.json
        images: folder with <label>/<_id>.<ext> images
        output: manifest CSV to write
    """
    by_stem = {posixpath.splitext(rel)[0]: uri for rel, uri in _files(images).items()}
    missing, rows = [], []
    for entry in _load_list(metadata, "metadata_full_dollar_street.json"):
        try:
            key = f"{entry['label']}/{entry['_id']}"
            values = [entry["label"], float(entry["income"]), entry["region"], entry["country"]]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{metadata}: entry {entry.get('_id', '?')} needs _id, label, numeric income, region and country"
            ) from None
        if key not in by_stem:
            missing.append(key)
            continue
        rows.append([_relative(output, by_stem[key]), *values])
    header = ["path", "label", "income", "region", "country"]
    return ImportResult(output, _write_manifest(output, header, rows), missing)


def import_casual_conversations(metadata: str, images: str, output: str) -> ImportResult:
    """Casual Conversations metadata → path,gender,age,skin_type manifest

    Join the parsed Casual Conversations JSON of VISSL's fairness indicators (a list of {age, gender,
    img_path, skin-type, subject_id}) with the extracted frames, for `seer eval fairness --indicator
    label-association` (the test set has no class label). An img_path is matched below IMAGES by its
    last components (the folder the frames were extracted into may differ from the one recorded).

    Args:
        metadata: parsed Casual Conversations JSON list
        images: folder the frames (face crops) were extracted into
        output: manifest CSV to write
    """
    files = _files(images)
    suffixes = {}
    for rel, uri in files.items():
        parts = rel.split("/")
        for i in range(len(parts)):
            suffixes.setdefault("/".join(parts[i:]), uri)
    missing, rows = [], []
    for entry in _load_list(metadata, "the parsed Casual Conversations list"):
        path = str(entry.get("img_path") or "")
        parts = path.strip("/").split("/")
        found = next(
            (suffixes[s] for s in ("/".join(parts[i:]) for i in range(len(parts))) if s in suffixes), None
        )
        if found is None:
            missing.append(path)
            continue
        values = [entry.get(k, "") for k in ("gender", "age", "skin-type", "subject_id")]
        rows.append([_relative(output, found), *values])
    header = ["path", "gender", "age", "skin_type", "subject_id"]
    return ImportResult(output, _write_manifest(output, header, rows), missing)
