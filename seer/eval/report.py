"""Evaluation reports: the metrics JSON, a self-contained HTML page with plots, and run comparisons.

`metrics.json` (schema `seer-eval-metrics-v1`)::

    {"schema", "eval", "created",
     "checkpoint": {"uri", "sha256", "preset"},
     "datasets": {role: {"uri", "format", "sha256", "samples", "classes", "bad_rows"}},
     "config": {...}, "config_sha256",
     "metrics": {name: number},            # flat; what `compare` diffs
     "lower_is_better": [name, ...],       # every other metric is higher-is-better
     "baselines": {name: {metric: number}},  # e.g. "random-init", "random-features"
     "details": {...}}                     # per-class / per-group / per-split breakdowns

`write_report` writes `report.html` first and `metrics.json` last, so a folder with metrics.json
holds a complete report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from string import Template

import numpy as np
from matplotlib.figure import Figure

from seer import storage
from seer.errors import SeerError

SCHEMA = "seer-eval-metrics-v1"


def config_sha256(config: Mapping) -> str:
    """sha256 of the canonical JSON of a config dict."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def metrics_document(
    eval_name: str,
    metrics: Mapping[str, float],
    *,
    checkpoint: Mapping[str, str],
    datasets: Mapping[str, Mapping],
    config: Mapping,
    lower_is_better: Sequence[str] = (),
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    details: Mapping | None = None,
) -> dict:
    """Assemble the metrics JSON document (see the module docstring)."""
    return {
        "schema": SCHEMA,
        "eval": eval_name,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "checkpoint": dict(checkpoint),
        "datasets": {k: dict(v) for k, v in datasets.items()},
        "config": dict(config),
        "config_sha256": config_sha256(config),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "lower_is_better": sorted(lower_is_better),
        "baselines": {k: {m: float(x) for m, x in v.items()} for k, v in (baselines or {}).items()},
        "details": _jsonable(details or {}),
    }


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------
# Plots (PNG bytes)


def _figure(width: float, height: float):
    """A pyplot-free figure (no global state, no GUI backend) and its single axes."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def plot_bars(values: Mapping[str, float], title: str, ylabel: str = "accuracy") -> bytes:
    """Bar chart of one number per class or group (NaN bars are drawn empty)."""
    names = list(values)
    known = [v is not None and bool(np.isfinite(v)) for v in values.values()]
    heights = [float(v) if ok else 0.0 for v, ok in zip(values.values(), known, strict=True)]
    fig, ax = _figure(max(4.0, 0.45 * len(names) + 1.5), 3.2)
    bars = ax.bar(range(len(names)), heights, color="#4c78a8")
    ax.bar_label(
        bars, labels=[f"{h:.2f}" if ok else "n/a" for h, ok in zip(heights, known, strict=True)], fontsize=7
    )
    ax.set_xticks(
        range(len(names)),
        names,
        rotation=45 if len(names) > 6 else 0,
        ha="right" if len(names) > 6 else "center",
    )
    ax.set_ylim(0, max(1.0, max(heights, default=0) * 1.1))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def plot_confusion(confusion: np.ndarray, classes: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    cm = np.asarray(confusion, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(10.0, 2.0 + 0.45 * len(classes))
    fig, ax = _figure(size, size * 0.85)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=90)
        ax.set_yticks(range(len(classes)), classes)
        for (i, j), count in np.ndenumerate(cm):
            if count:
                ax.text(
                    j,
                    i,
                    int(count),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _png(fig)


def plot_distance_cdf(distances_km: np.ndarray, thresholds_km: Sequence[float]) -> bytes:
    """Cumulative share of predictions within d km (log x axis), thresholds marked."""
    d = np.sort(np.maximum(np.asarray(distances_km, dtype=np.float64), 1e-3))
    fig, ax = _figure(6, 3.5)
    ax.step(d, np.arange(1, len(d) + 1) / max(len(d), 1), where="post", color="#4c78a8")
    for t in thresholds_km:
        ax.axvline(t, color="#999", linestyle=":", linewidth=1)
        ax.text(t, 1.01, f"{t:g} km", fontsize=7, ha="center", va="bottom")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("great-circle error (km)")
    ax.set_ylabel("share of images")
    ax.set_title("distance CDF")
    return _png(fig)


def plot_precision_recall(
    precision: np.ndarray, recall: np.ndarray, title: str = "precision–recall (pooled)"
) -> bytes:
    fig, ax = _figure(5, 3.8)
    ax.plot(recall, precision, color="#4c78a8")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML and files


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4f}</td>'
        if isinstance(v, int):
            return f'<td class="num">{v}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(doc: Mapping, plots: Mapping[str, bytes]) -> str:
    """A self-contained HTML page: metrics, baselines, datasets, embedded PNG plots, config."""
    template = Template(resources.files("seer.eval").joinpath("templates/report.html").read_text())
    metrics_rows = [[k, v] for k, v in doc["metrics"].items()]
    baselines = doc.get("baselines") or {}
    baselines_table = ""
    if baselines:
        names = list(doc["metrics"])
        rows = [[m, doc["metrics"][m], *[b.get(m, float("nan")) for b in baselines.values()]] for m in names]
        baselines_table = "<h2>Against baselines</h2>" + _table(
            rows, ["metric", "this checkpoint", *baselines]
        )
    dataset_rows = [
        [
            role,
            d.get("uri", ""),
            d.get("samples", ""),
            d.get("classes", ""),
            d.get("bad_rows", ""),
            str(d.get("sha256", ""))[:16],
        ]
        for role, d in doc["datasets"].items()
    ]
    images = "".join(
        f'<h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">'
        for title, png in plots.items()
    )
    return template.substitute(
        eval=html.escape(doc["eval"]),
        created=html.escape(doc["created"]),
        checkpoint_uri=html.escape(str(doc["checkpoint"].get("uri", ""))),
        checkpoint_short=html.escape(str(doc["checkpoint"].get("sha256", ""))[:16]),
        preset=html.escape(str(doc["checkpoint"].get("preset", ""))),
        config_short=doc["config_sha256"][:16],
        metrics_table=_table(metrics_rows, ["metric", "value"]),
        baselines_table=baselines_table,
        datasets_table=_table(dataset_rows, ["role", "uri", "samples", "classes", "bad rows", "sha256"]),
        plots=images or "<p>No plots for this evaluation.</p>",
        config_json=html.escape(json.dumps(doc["config"], indent=2, sort_keys=True, default=str)),
    )


def write_report(out_uri: str, doc: Mapping, plots: Mapping[str, bytes]) -> dict[str, str]:
    """Write `report.html` then `metrics.json` under `out_uri`; returns their URIs."""
    paths = {"html": storage.join(out_uri, "report.html"), "metrics": storage.join(out_uri, "metrics.json")}
    storage.write_text(paths["html"], render_html(doc, plots))
    storage.write_json(paths["metrics"], doc)
    return paths


# ---------------------------------------------------------------------------------------------
# Comparison


class CompareError(SeerError, ValueError):
    """Two metrics documents cannot be compared."""


@dataclass
class Comparison:
    """Per-metric deltas between two runs and which of them regressed beyond the threshold."""

    eval: str
    deltas: dict[str, dict[str, float | bool]]
    regressions: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "eval": self.eval,
            "deltas": self.deltas,
            "regressions": self.regressions,
            "warnings": self.warnings,
        }

    def table(self) -> str:
        lines = [f"{'metric':<24} {'previous':>10} {'current':>10} {'delta':>10}"]
        for name, d in self.deltas.items():
            flag = "  REGRESSION" if d["regression"] else ""
            prev = "—" if d["previous"] is None else f"{d['previous']:.4f}"
            cur = "—" if d["current"] is None else f"{d['current']:.4f}"
            delta = "—" if d["delta"] is None else f"{d['delta']:+.4f}"
            lines.append(f"{name:<24} {prev:>10} {cur:>10} {delta:>10}{flag}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def compare(current: Mapping, previous: Mapping, threshold: float = 0.01) -> Comparison:
    """Deltas current − previous for every metric; a regression is a move in the bad direction by
    more than `threshold` (absolute, in the metric's units). Warns when the dataset or config
    changed between the runs, since their numbers are then not like for like."""
    for doc, role in ((current, "current"), (previous, "previous")):
        if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
            raise CompareError(
                f"the {role} document is not a {SCHEMA} metrics.json; pass the files `seer eval` wrote"
            )
    if current["eval"] != previous["eval"]:
        raise CompareError(
            f"cannot compare a {current['eval']!r} run with a {previous['eval']!r} run; pass two runs of the same evaluation"
        )
    if threshold < 0:
        raise CompareError("the regression threshold must be >= 0")
    warnings = []
    cur_ds = {k: v.get("sha256") for k, v in current["datasets"].items()}
    prev_ds = {k: v.get("sha256") for k, v in previous["datasets"].items()}
    if cur_ds != prev_ds:
        warnings.append(
            "dataset contents differ between the runs (sha256); deltas mix model and data changes"
        )
    if current["config_sha256"] != previous["config_sha256"]:
        warnings.append("evaluation config differs between the runs; deltas mix model and protocol changes")
    lower = set(current.get("lower_is_better", ())) | set(previous.get("lower_is_better", ()))
    deltas: dict[str, dict[str, float | bool]] = {}
    regressions = []
    for name in list(previous["metrics"]) + [m for m in current["metrics"] if m not in previous["metrics"]]:
        cur, prev = current["metrics"].get(name), previous["metrics"].get(name)
        delta = None if cur is None or prev is None else cur - prev
        worse = delta is not None and ((delta > threshold) if name in lower else (delta < -threshold))
        if cur is None:
            warnings.append(f"metric {name!r} is missing from the current run")
        deltas[name] = {"previous": prev, "current": cur, "delta": delta, "regression": worse}
        if worse:
            regressions.append(name)
    return Comparison(eval=current["eval"], deltas=deltas, regressions=regressions, warnings=warnings)


def classification_plots(
    per_class: np.ndarray, confusion: np.ndarray, classes: Sequence[str]
) -> dict[str, bytes]:
    """The per-class accuracy bars and the confusion matrix of a classification result."""
    return {
        "per-class accuracy": plot_bars(dict(zip(classes, per_class, strict=True)), "accuracy per class"),
        "confusion matrix": plot_confusion(confusion, classes),
    }
