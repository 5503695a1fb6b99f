"""`seer eval`: one subcommand per evaluation protocol, `compare` for scheduled re-evaluations, and
`make-benchmark` for the generated benchmark sets."""

from __future__ import annotations

import argparse
import json
import sys

_EPILOG = (
    "Every URI is a local path, file://, s3:// or minio:// URI. Datasets: an image folder "
    "(ROOT/<class>/<image>), a CSV/JSONL manifest, or a `seer shard` folder / manifest.json. "
    "Writes OUTPUT/report.html (plots) and OUTPUT/metrics.json (schema seer-eval-metrics-v1)."
)


class _Formatter(argparse.HelpFormatter):
    """Appends "(default: X)" to options that have a meaningful default not already described."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, [], (), argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        return f"{text} (default: {shown})"


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        required=True,
        help="weights to evaluate: a seer consolidated file, a sliced checkpoint (folder or index.json), "
        "VISSL / timm / torchvision weights, or `random` for a freshly initialised trunk (needs --preset)",
    )
    g.add_argument(
        "--preset",
        default=None,
        help="model preset (e.g. rg-tiny, rg32gf); needed when the checkpoint does not record one",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if available, this rank's GPU under torchrun), cpu, cuda:N",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the probe, of random baselines and of `random` trunks"
    )


def _add_features(p: argparse.ArgumentParser, tap: str, pool: str, transform: str) -> None:
    g = p.add_argument_group("features")
    g.add_argument(
        "--tap",
        default=tap,
        choices=("res2", "res3", "res4", "res5", "avgpool"),
        help="trunk output to use",
    )
    g.add_argument(
        "--pool",
        default=pool,
        help="pooling of the tap: avg (global average), adaptive:HxW (e.g. adaptive:2x1, the §5.1 res4/res5 "
        "features), none (whole map), rmac:LEVELS (R-MAC regions)",
    )
    g.add_argument(
        "--transform",
        default=transform,
        help="test transform: shorter:RESIZE:CROP (resize shorter side, centre crop), square:SIZE (resize to "
        "SIZE×SIZE), longer:SIZE (resize longer side, no crop); append :bicubic for bicubic",
    )
    g.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto = bf16 autocast on CUDA, fp32 on CPU",
    )
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass during extraction")
    g.add_argument(
        "--workers", type=int, default=4, help="image-decoding worker processes (0 = in the main process)"
    )
    g.add_argument(
        "--cache",
        default=None,
        help="URI prefix of the feature cache, keyed by checkpoint sha256, dataset sha256, tap, pool, transform "
        "and precision; a re-run with the same key skips extraction",
    )


def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--format",
        default="auto",
        choices=("auto", "folder", "csv", "jsonl", "shards"),
        help="dataset layout (auto: from the URI)",
    )
    g.add_argument(
        "--max-bad-rows",
        default="0",
        help="bad rows (missing file, bad label, bad coordinates) to tolerate before stopping: a count (0) or a "
        "percentage (2%%); tolerated rows are skipped and counted in the report",
    )


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", default=None, help="folder for report.html + metrics.json (default: print only)"
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        choices=("random-init", "random-features"),
        help="also evaluate a baseline and report it next to the checkpoint: random-init (a freshly "
        "initialised trunk of the same preset) or random-features (Gaussian features, chance); repeatable",
    )


def _add_probe(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("linear probe (VISSL: BN + Linear, SGD Nesterov)")
    g.add_argument("--epochs", type=int, default=28, help="training epochs over the frozen features")
    g.add_argument(
        "--milestones", type=_ints, default=(8, 16, 24), help="epochs where the LR is multiplied by 0.1"
    )
    g.add_argument(
        "--base-lr", type=float, default=0.01, help="learning rate per 256 samples (scaled by batch/256)"
    )
    g.add_argument("--probe-batch-size", type=int, default=256, help="mini-batch size of the probe")
    g.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    g.add_argument(
        "--weight-decay", type=float, default=5e-4, help="weight decay of the Linear (BN is not decayed)"
    )


def _options(args: argparse.Namespace):
    from seer.eval.features import FeatureOptions, parse_pool, parse_transform

    return FeatureOptions(
        tap=args.tap,
        pool=parse_pool(args.pool),
        transform=parse_transform(args.transform),
        precision=args.precision,
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache=args.cache,
    )


def _probe(args: argparse.Namespace):
    from seer.eval.linear import LinearConfig

    return LinearConfig(
        epochs=args.epochs,
        milestones=args.milestones,
        base_lr=args.base_lr,
        batch_size=args.probe_batch_size,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )


def _common(args: argparse.Namespace) -> dict:
    return {"device": args.device, "max_bad_rows": args.max_bad_rows, "output": args.output}


def _print(doc: dict, output: str | None) -> int:
    width = max(len(k) for k in doc["metrics"]) if doc["metrics"] else 6
    baselines = doc.get("baselines") or {}
    print(f"{'metric':<{width}}  {'value':>9}" + "".join(f"  {b:>15}" for b in baselines))
    for name, value in doc["metrics"].items():
        extra = "".join(f"  {baselines[b].get(name, float('nan')):>15.4f}" for b in baselines)
        print(f"{name:<{width}}  {value:>9.4f}{extra}")
    if output:
        print(f"report: {output}/report.html  metrics: {output}/metrics.json")
    return 0


def _linear(args: argparse.Namespace) -> int:
    from seer.eval import linear

    doc = linear.run(
        args.train,
        args.val,
        args.checkpoint,
        preset=args.preset,
        options=_options(args),
        config=_probe(args),
        baselines=tuple(args.baseline),
        fmt=args.format,
        save_classifier_uri=args.save_classifier,
        **_common(args),
    )
    return _print(doc, args.output)


def _knn(args: argparse.Namespace) -> int:
    from seer.eval import knn

    doc = knn.run(
        args.train,
        args.val,
        args.checkpoint,
        preset=args.preset,
        options=_options(args),
        k=args.k,
        temperature=args.temperature,
        baselines=tuple(args.baseline),
        seed=args.seed,
        fmt=args.format,
        **_common(args),
    )
    return _print(doc, args.output)


def _test384(args: argparse.Namespace) -> int:
    from seer.eval import test384

    doc = test384.run(
        args.val,
        args.checkpoint,
        resolution=args.resolution,
        batch_size=args.batch_size,
        num_workers=args.workers,
        precision=args.precision,
        cache=args.cache,
        fmt=args.format,
        **_common(args),
    )
    return _print(doc, args.output)


def _copy_detection(args: argparse.Namespace) -> int:
    from seer.eval import copy_detection

    doc = copy_detection.run(
        args.queries,
        args.checkpoint,
        database_uri=args.database,
        whitening_uri=args.whitening,
        preset=args.preset,
        options=_options(args),
        pca_dims=args.pca_dims,
        baselines=tuple(args.baseline),
        seed=args.seed,
        **_common(args),
    )
    return _print(doc, args.output)


def _geolocalization(args: argparse.Namespace) -> int:
    from seer.eval import geolocalization

    doc = geolocalization.run(
        args.train,
        args.val,
        args.checkpoint,
        method=args.method,
        cells_uri=args.cells,
        cell_deg=args.cell_deg,
        preset=args.preset,
        options=_options(args),
        config=_probe(args),
        baselines=tuple(args.baseline),
        fmt=args.format,
        **_common(args),
    )
    return _print(doc, args.output)


def _fairness(args: argparse.Namespace) -> int:
    from seer.eval import fairness

    doc = fairness.run(
        args.train,
        args.test,
        args.checkpoint,
        harmful_labels=args.harmful_labels,
        classifier=args.classifier,
        k=args.k,
        temperature=args.temperature,
        preset=args.preset,
        options=_options(args),
        config=_probe(args),
        baselines=tuple(args.baseline),
        fmt=args.format,
        **_common(args),
    )
    return _print(doc, args.output)


def _compare(args: argparse.Namespace) -> int:
    from seer import storage
    from seer.eval import report

    result = report.compare(storage.read_json(args.current), storage.read_json(args.previous), args.threshold)
    print(result.table())
    if args.output:
        storage.write_json(args.output, result.to_dict())
    if result.regressions:
        print(
            f"{len(result.regressions)} regression(s) beyond {args.threshold}: {', '.join(result.regressions)}",
            file=sys.stderr,
        )
        return 1 if args.fail_on_regression else 0
    return 0


def _make_benchmark(args: argparse.Namespace) -> int:
    from seer.data.synthetic_benchmarks import BENCHMARKS

    sizes = {"size": args.size} if args.size else {}
    manifests = BENCHMARKS[args.kind](args.output, seed=args.seed, **sizes)
    print(json.dumps(manifests, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `seer eval` and its subcommands."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: linear probe, k-NN, 384px test, copy detection, geolocalization, fairness",
        description="Evaluate a frozen trunk with the SEER protocols (seer_spec §5) and write a metrics JSON + "
        "HTML report; compare two runs' metrics.",
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="EVAL", required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=_EPILOG,
            formatter_class=_Formatter,
        )

    p = add(
        "linear",
        "linear probe (BN + Linear on frozen features) → top-1/top-5",
        "VISSL linear evaluation: BatchNorm + Linear trained on frozen trunk features with SGD Nesterov "
        "(momentum 0.9, weight decay 5e-4 except BN, LR 0.01 per 256, ×0.1 at the milestones).",
    )
    p.add_argument("--train", required=True, help="labelled training set (folder or `path,label` manifest)")
    p.add_argument("--val", required=True, help="labelled validation set, same classes as --train")
    p.add_argument(
        "--save-classifier",
        default=None,
        help="also write trunk + trained probe (BN folded into the Linear) as a classifier checkpoint for test384",
    )
    _add_model(p)
    _add_features(p, "avgpool", "avg", "shorter:256:224")
    _add_probe(p)
    _add_data(p)
    _add_output(p)
    p.set_defaults(func=_linear)

    p = add(
        "knn",
        "weighted k-NN on frozen features → top-1/top-5",
        "Cosine k-NN: each validation image's k nearest training images vote with weight exp(similarity / τ).",
    )
    p.add_argument("--train", required=True, help="labelled training set (the neighbours)")
    p.add_argument("--val", required=True, help="labelled validation set, same classes as --train")
    p.add_argument("--k", type=int, default=20, help="number of neighbours")
    p.add_argument("--temperature", type=float, default=0.07, help="τ of the exp(similarity / τ) vote weight")
    _add_model(p)
    _add_features(p, "avgpool", "avg", "shorter:256:224")
    _add_data(p)
    _add_output(p)
    p.set_defaults(func=_knn)

    p = add(
        "test384",
        "fine-tuned classifier (trunk + linear) at 384 px → top-1/top-5",
        "Test-only pass of a classifier checkpoint (consolidated file with a clf.0 head): resize shorter side "
        "to --resolution (bicubic), centre crop, ImageNet normalisation (seer_spec §5.2).",
    )
    p.add_argument(
        "--val", required=True, help="labelled evaluation set; labels must be the classifier's class names"
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="classifier checkpoint (`seer eval linear --save-classifier`, or `seer ckpt convert --to seer` of a "
        "fine-tuned timm / torchvision model)",
    )
    p.add_argument("--resolution", type=int, default=384, help="test resolution (resize and crop size)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:N")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto = bf16 autocast on CUDA, fp32 on CPU",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument(
        "--workers", type=int, default=4, help="image-decoding worker processes (0 = in the main process)"
    )
    p.add_argument(
        "--cache", default=None, help="URI prefix of the feature cache (see `seer eval linear --help`)"
    )
    _add_data(p)
    p.add_argument(
        "--output", default=None, help="folder for report.html + metrics.json (default: print only)"
    )
    p.set_defaults(func=_test384)

    p = add(
        "copy-detection",
        "R-MAC copy detection (CopyDays protocol) → mAP per split, µAP",
        "R-MAC (3 levels) over res4, PCA-whitening learnt on --whitening, cosine ranking of the database "
        "(seer_spec §5.3). AP is the trapezoidal (revisitop) rule; µAP pools every query's predictions.",
    )
    p.add_argument("--queries", required=True, help="pairs manifest: query,reference[,split] (CSV or JSONL)")
    p.add_argument(
        "--database",
        default=None,
        help="database images incl. distractors (manifest or folder; default: the references)",
    )
    p.add_argument(
        "--whitening",
        default=None,
        help="separate image set to learn PCA-whitening on (default: no whitening)",
    )
    p.add_argument("--pca-dims", type=int, default=1024, help="dimensions kept by the whitening (N_PCA)")
    _add_model(p)
    _add_features(p, "res4", "rmac:3", "longer:224")
    _add_output(p)
    p.add_argument(
        "--max-bad-rows", default="0", help="bad pair rows to tolerate: a count (0) or a percentage (2%%)"
    )
    p.set_defaults(func=_copy_detection)

    p = add(
        "geolocalization",
        "predict image locations → accuracy at 1/25/200/750/2500 km",
        "Predict each validation image's location from the training images (nearest neighbour, or a cell "
        "classifier) and score the great-circle (haversine, R = 6371 km) error.",
    )
    p.add_argument("--train", required=True, help="training set manifest: path,lat,lon")
    p.add_argument("--val", required=True, help="validation set manifest: path,lat,lon")
    p.add_argument(
        "--method",
        default="nn",
        choices=("nn", "cells"),
        help="nn: nearest training image; cells: cell classifier",
    )
    p.add_argument(
        "--cells", default=None, help="partition CSV cell,lat,lon (cells method; default: a lat/lon grid)"
    )
    p.add_argument(
        "--cell-deg", type=float, default=1.0, help="grid cell size in degrees when --cells is not given"
    )
    _add_model(p)
    _add_features(p, "avgpool", "avg", "shorter:256:224")
    _add_probe(p)
    _add_data(p)
    _add_output(p)
    p.set_defaults(func=_geolocalization)

    p = add(
        "fairness",
        "per-group accuracy, disparity and harmful-label predictions",
        "Train a classifier on frozen features of --train, then report accuracy per group of --test, the "
        "disparity across groups (max − min, min / max) and predictions of harmful labels per group.",
    )
    p.add_argument("--train", required=True, help="labelled training set (path,label[,group])")
    p.add_argument("--test", required=True, help="grouped test set manifest: path,label,group")
    p.add_argument(
        "--harmful-labels",
        type=_names,
        default=(),
        help="comma-separated class names counted as harmful predictions",
    )
    p.add_argument(
        "--classifier", default="linear", choices=("linear", "knn"), help="classifier on the features"
    )
    p.add_argument("--k", type=int, default=20, help="neighbours (knn classifier)")
    p.add_argument(
        "--temperature", type=float, default=0.07, help="τ of the k-NN vote weight (knn classifier)"
    )
    _add_model(p)
    _add_features(p, "avgpool", "avg", "shorter:256:224")
    _add_probe(p)
    _add_data(p)
    _add_output(p)
    p.set_defaults(func=_fairness)

    p = sub.add_parser(
        "compare",
        formatter_class=_Formatter,
        help="deltas between two runs' metrics.json; flag regressions",
        description="Compare the metrics of the current run with a previous run of the same evaluation (the "
        "scheduled re-evaluation). Prints per-metric deltas and flags moves in the bad direction beyond "
        "--threshold; warns when the datasets or configs differ.",
    )
    p.add_argument("current", help="metrics.json of the new run")
    p.add_argument("previous", help="metrics.json of the run to compare against")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.01,
        help="regression threshold, absolute in metric units (0.01 = 1 point)",
    )
    p.add_argument(
        "--fail-on-regression", action="store_true", help="exit with status 1 when any metric regressed"
    )
    p.add_argument("--output", default=None, help="write the comparison as JSON to this URI")
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "make-benchmark",
        formatter_class=_Formatter,
        help="write a generated benchmark set (counting, copy-detection, geo, fairness)",
        description="Generate a small deterministic benchmark set (images + manifests) for demos and tests.",
    )
    p.add_argument("kind", choices=("counting", "copy-detection", "geo", "fairness"), help="which benchmark")
    p.add_argument("--output", required=True, help="folder URI to write images and manifests to")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default: the benchmark's own)")
    p.set_defaults(func=_make_benchmark)
