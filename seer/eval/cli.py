"""`seer eval`: one subcommand per evaluation protocol, `compare` for scheduled re-evaluations, and
`make-benchmark` for the generated benchmark sets."""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any

from seer.eval.setup import BASELINES, FeatureOptions, add_fields, from_args

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
        help="model preset, i.e. architecture (e.g. rg-tiny, rg32gf; not a pretraining config); needed when "
        "the checkpoint does not record one",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if available, this rank's GPU under torchrun), cpu, cuda:N",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the probe, of random baselines and of `random` trunks"
    )
    g.add_argument(
        "--shard",
        default="auto",
        choices=("auto", "on", "off"),
        help="under torchrun, shard the trunk over the ranks with FSDP2, loaded from a sliced checkpoint with "
        "each rank reading only its rows (SEER's 10B protocol); auto: when the fp32 trunk would take more than "
        "half of one rank's memory",
    )


def _add_data(p: argparse.ArgumentParser, formats: bool = True) -> None:
    g = p.add_argument_group("data")
    if formats:
        g.add_argument(
            "--format",
            default="auto",
            dest="fmt",
            choices=("auto", "folder", "csv", "jsonl", "shards"),
            help="dataset layout (auto: from the URI)",
        )
    g.add_argument(
        "--max-bad-rows",
        default="0",
        help="bad rows (missing file, bad label, bad coordinates) to tolerate before stopping: a count (0) or a "
        "percentage (2%%); tolerated rows are skipped and counted in the report",
    )


def _add_output(p: argparse.ArgumentParser, baselines: bool = True) -> None:
    p.add_argument(
        "--output", default=None, help="folder for report.html + metrics.json (default: print only)"
    )
    if baselines:
        p.add_argument(
            "--baseline",
            action="append",
            default=[],
            dest="baselines",
            choices=BASELINES,
            help="also evaluate a baseline and report it next to the checkpoint: random-init (a freshly "
            "initialised trunk of the same preset) or random-features (Gaussian features, chance); repeatable",
        )


@dataclass(frozen=True)
class _Protocol:
    """How one `seer eval` subcommand maps onto its library `run`."""

    module: str
    help: str
    description: str
    inputs: dict[str, tuple[str, str, bool]]  # run() parameter → (flag, help, required)
    config: str | None = None  # name of the config dataclass in the module
    probe: bool = False  # also takes a LinearConfig (`probe=`)
    features: dict[str, Any] = field(default_factory=dict)  # FeatureOptions default overrides
    skip_features: tuple[str, ...] = ()
    baselines: bool = True
    formats: bool = True


_TRAIN_VAL = {
    "train_uri": ("--train", "labelled training set (folder or `path,label` manifest)", True),
    "val_uri": ("--val", "labelled validation set, same classes as --train", True),
}
_GROUPED = {
    "train_uri": (
        "--train",
        "labelled training set (path,label[,group]); not with --classifier finetuned",
        False,
    ),
    "test_uri": ("--test", "grouped test set manifest: path,label,group", True),
}
PROTOCOLS = {
    "linear": _Protocol(
        "linear",
        "linear probe (BN + Linear on frozen features) → top-1/top-5",
        "VISSL linear evaluation: BatchNorm + Linear trained on frozen trunk features with SGD Nesterov "
        "(momentum 0.9, weight decay 5e-4 except BN, LR 0.01 per 256, ×0.1 at the milestones). "
        "--protocol vissl (default) trains on fresh RandomResizedCrop + flip crops every epoch through the "
        "frozen trunk, as VISSL; --protocol fast reuses one test-transform pass (no augmentation). Features: "
        "the model's published tap (--tap published --pool published: 32Gf res5 pooled 3x1, 64-256Gf avgpool, "
        "10B res4 pooled 2x1; avgpool for other presets). The report records the protocol and tap that ran.",
        {
            **_TRAIN_VAL,
            "save_classifier_uri": (
                "--save-classifier",
                "also write trunk + trained probe (BN folded into the Linear) as a classifier checkpoint for "
                "test384",
                False,
            ),
        },
        config="LinearConfig",
        features={"tap": "published", "pool": "published"},
    ),
    "knn": _Protocol(
        "knn",
        "weighted k-NN on frozen features → top-1/top-5",
        "Cosine k-NN: each validation image's k nearest training images vote with weight exp(similarity / τ).",
        {
            "train_uri": ("--train", "labelled training set (the neighbours)", True),
            "val_uri": _TRAIN_VAL["val_uri"],
        },
        config="KnnConfig",
    ),
    "test384": _Protocol(
        "test384",
        "fine-tuned classifier (trunk + linear) at 384 px → top-1/top-5",
        "Test-only pass of a classifier checkpoint: resize shorter side to --resolution (bicubic), centre crop, "
        "ImageNet normalisation (seer_spec §5.2). The checkpoint is a VISSL finetuned_in1k file (with --preset), "
        "a timm regnety_* or torchvision regnet_y_* classifier, or `seer eval linear --save-classifier` output. "
        "A 1000-way head without class names is ImageNet-1k: its classes are the wnids (n01440764, ...), so "
        "--val can be the standard ImageNet val folder (val/<wnid>/<image>).",
        {
            "val_uri": (
                "--val",
                "labelled evaluation set; labels must be the classifier's class names (ImageNet: wnids)",
                True,
            )
        },
        config="Test384Config",
        features={"batch_size": 32},
        skip_features=("tap", "pool", "transform"),
        baselines=False,
    ),
    "copy-detection": _Protocol(
        "copy_detection",
        "R-MAC copy detection (CopyDays protocol) → strong.mAP, mAP per split, µAP",
        "R-MAC (3 levels) over res4 in fp32, PCA-whitening learnt on --whitening (required, separate from the "
        "database), cosine ranking of the database plus up to --max-distractors distractors (seer_spec §5.3). "
        "AP is the trapezoidal (revisitop) rule; µAP pools every query's predictions; the headline is "
        "strong.mAP. `seer eval import-copydays` writes the manifests from the Copydays folders.",
        {
            "queries_uri": ("--queries", "pairs manifest: query,reference[,split] (CSV or JSONL)", True),
            "database_uri": (
                "--database",
                "database images (manifest or folder; default: the references)",
                False,
            ),
            "distractors_uri": (
                "--distractors",
                "distractor images added to the database, never relevant (manifest or folder)",
                False,
            ),
            "whitening_uri": (
                "--whitening",
                "required: separate image set to learn the PCA-whitening on (manifest or folder)",
                False,
            ),
        },
        config="CopyDetectionConfig",
        features={"tap": "res4", "pool": "rmac:3", "transform": "longer:224", "precision": "fp32"},
        formats=False,
    ),
    "geolocalization": _Protocol(
        "geolocalization",
        "predict image locations → accuracy at 1/25/200/750/2500 km",
        "Predict each validation image's location from the training images (nearest neighbour, or a cell "
        "classifier whose prediction is the top cell's mean coordinates) and score the great-circle (haversine, "
        "R = 6371 km) error. nn and cells use frozen features; SEER fine-tunes the whole trunk on YFCC cells "
        "(seer_spec §5.4): --method finetuned scores a `seer finetune --recipe im2gps` classifier file with its "
        "own head. Reports record which protocol ran (frozen-features or fine-tuned).",
        {
            "train_uri": (
                "--train",
                "training set manifest: path,lat,lon[,cell] (cell: per-image S2 label); not with --method "
                "finetuned",
                False,
            ),
            "val_uri": (
                "--val",
                "validation set manifest: path,lat,lon (e.g. `seer eval import-im2gps` output)",
                True,
            ),
            "cells_uri": (
                "--cells",
                "partition CSV: a GeoEstimation cells_50_*.csv as released, or cell,lat,lon (cells method; "
                "default: a lat/lon grid)",
                False,
            ),
        },
        config="GeoConfig",
        probe=True,
    ),
    "fairness": _Protocol(
        "fairness",
        "per-group accuracy, disparity and harmful-label predictions",
        "Train a classifier on frozen features of --train (or, --classifier finetuned, use the head of a "
        "`seer finetune` classifier file given as --checkpoint), then report the indicator on --test: accuracy "
        "per group, the disparity across groups (max − min, min / max) and harmful-label predictions per group, "
        "or SEER's geographic / label-association indicators.",
        _GROUPED,
        config="FairnessConfig",
        probe=True,
    ),
}


def _with_seed(config: Any, seed: int | None) -> Any:
    return (
        replace(config, seed=seed)
        if seed is not None and "seed" in {f.name for f in fields(config)}
        else config
    )


def _run(protocol: _Protocol, args: argparse.Namespace) -> int:
    from seer.eval.linear import LinearConfig

    module = importlib.import_module(f"seer.eval.{protocol.module}")
    kwargs = {param: getattr(args, param) for param in protocol.inputs}
    if protocol.config:
        kwargs["config"] = _with_seed(
            from_args(getattr(module, protocol.config), args), getattr(args, "seed", None)
        )
    if protocol.probe:
        kwargs["probe"] = _with_seed(from_args(LinearConfig, args), args.seed)
    if protocol.config == "LinearConfig":
        kwargs["protocol"] = from_args(module.LinearProtocol, args)
    settings = {"baselines": tuple(args.baselines)} if protocol.baselines else {}
    if protocol.formats:
        settings["fmt"] = args.fmt
    if "preset" in args:
        settings["preset"] = args.preset
    if "shard" in args:
        settings["shard"] = args.shard
    doc = module.run(
        checkpoint=args.checkpoint,
        options=from_args(FeatureOptions, args),
        device=args.device,
        max_bad_rows=args.max_bad_rows,
        output=args.output,
        **settings,
        **kwargs,
    )
    return _print(doc, args.output)


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


def _compare(args: argparse.Namespace) -> int:
    """deltas between two runs' metrics.json; flag regressions

    Compare the metrics of the current run with a previous run of the same evaluation (the scheduled
    re-evaluation). Prints per-metric deltas and flags moves in the bad direction beyond --threshold;
    warns when the datasets or configs differ.
    """
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
    """write a generated benchmark set (counting, copy-detection, geo, fairness)

    Generate a small deterministic benchmark set (images + manifests) for demos and tests.
    """
    from seer.data.synthetic_benchmarks import BENCHMARKS

    sizes = {"size": args.size} if args.size else {}
    manifests = BENCHMARKS[args.kind](args.output, seed=args.seed, **sizes)
    print(json.dumps(manifests, indent=2))
    return 0


def _import(args: argparse.Namespace) -> int:
    params = {name: getattr(args, name) for name in inspect.signature(args.importer).parameters}
    print(args.importer(**params).summary())
    return 0


def _docstring_help(func: Any) -> tuple[str, str, dict[str, str]]:
    """(summary line, description, {argument: text}) of a docstring with an `Args:` section."""
    summary, _, rest = inspect.getdoc(func).partition("\n\n")
    description, _, args = rest.partition("Args:")
    texts: dict[str, str] = {}
    for line in args.splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and line.startswith("    ") and not line.startswith("        "):
            texts[name] = text
        elif texts and line.strip():
            texts[list(texts)[-1]] += " " + line.strip()
    return summary, " ".join(description.split()), texts


def _command(
    sub: argparse._SubParsersAction, name: str, handler: Any, **defaults: Any
) -> argparse.ArgumentParser:
    """Subcommand `name` run by `handler`; its help and description are the docstring of `handler`
    (or of `defaults["importer"]`, the function an import command wraps)."""
    summary, description, _ = _docstring_help(defaults.get("importer", handler))
    p = sub.add_parser(name, formatter_class=_Formatter, help=summary, description=description)
    p.set_defaults(func=handler, **defaults)
    return p


def _add_importers(sub: argparse._SubParsersAction) -> None:
    """`seer eval import-*`: one subcommand per importer, its flags and help from the function."""
    from seer.eval import importers

    for func in (
        importers.import_imagenet_val,
        importers.import_im2gps,
        importers.import_dollar_street,
        importers.import_casual_conversations,
    ):
        p = _command(sub, func.__name__.replace("_", "-"), _import, importer=func)
        texts = _docstring_help(func)[2]
        for param in inspect.signature(func).parameters.values():
            required = param.default is inspect.Parameter.empty
            kind = int if isinstance(param.default, int) else str
            p.add_argument(
                "--" + param.name.replace("_", "-"),
                dest=param.name,
                required=required,
                type=kind,
                default=None if required else param.default,
                help=texts[param.name],
            )


def _plan(args: argparse.Namespace) -> int:
    """per-GPU memory of evaluating a model, sharded over N GPUs or whole on one

    Print the per-GPU memory (parameter shards, gathered FSDP units, activations) of frozen-trunk
    evaluation at each resolution, and whether it fits: e.g. rg10b on 8 x 40 GB sharded (`--shard on`
    under torchrun) or whole on one 80/141 GB GPU.
    """
    from seer.eval.plan import eval_memory, format_eval_plan

    rows = [
        eval_memory(args.preset, gpus, gib, px, args.batch)
        for gpus, gib in (_gpu_setup(text) for text in args.gpus)
        for px in args.resolution
    ]
    print(format_eval_plan(rows))
    return 0


def _gpu_setup(text: str) -> tuple[int, float]:
    """`8x40` → (8 GPUs, 40 GiB each)."""
    try:
        count, gib = text.lower().split("x")
        return int(count), float(gib)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPUSxGIB (e.g. 8x40), got {text!r}") from None


def _import_copydays(args: argparse.Namespace) -> int:
    """Copydays folders (+ distractor and whitening lists) → copy-detection manifests

    Read INRIA Copydays as distributed (ROOT/original, strong, jpegqual/Q, crops/P) and write
    queries.csv (query,reference,split; splits original, strong, jpegqual_Q, crops_P), database.csv,
    distractors.csv and whitening.csv for `seer eval copy-detection` (seer_spec §5.3).
    """
    from seer.eval.copydays import import_copydays

    print(
        json.dumps(
            import_copydays(args.root, args.output, args.distractors, args.whitening, args.max_distractors),
            indent=2,
        )
    )
    return 0


def _add_import_copydays(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "import-copydays", _import_copydays)
    p.add_argument("root", help="the Copydays folder holding original/, strong/, jpegqual/, crops/")
    p.add_argument("--output", required=True, help="folder URI for the manifests")
    p.add_argument(
        "--distractors",
        default=None,
        help="folder or list file of distractor images (SEER: 10k YFCC100M images)",
    )
    p.add_argument(
        "--whitening",
        default=None,
        help="folder or list file of the separate whitening images (DINO: 20k YFCC100M images)",
    )
    p.add_argument(
        "--max-distractors", type=int, default=10000, help="distractors kept (the first N of the list)"
    )


def _add_protocol(sub: argparse._SubParsersAction, name: str, protocol: _Protocol) -> None:
    from seer.eval.linear import LinearConfig

    module = importlib.import_module(f"seer.eval.{protocol.module}")
    p = sub.add_parser(
        name, help=protocol.help, description=protocol.description, epilog=_EPILOG, formatter_class=_Formatter
    )
    for param, (flag, help_text, required) in protocol.inputs.items():
        p.add_argument(flag, dest=param, required=required, default=None, help=help_text)
    probe_group = "linear probe (VISSL: BN + Linear, SGD Nesterov)"
    if protocol.config and protocol.config != "LinearConfig":
        add_fields(p, getattr(module, protocol.config))
    if protocol.baselines:
        _add_model(p)
    else:
        p.add_argument("--checkpoint", required=True, help="classifier checkpoint (see the description)")
        p.add_argument(
            "--preset",
            default=None,
            help="model preset of the classifier's trunk (needed for VISSL files; timm / torchvision: inferred)",
        )
        p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:N")
    own = module.default_options() if hasattr(module, "default_options") else FeatureOptions()
    defaults = {"transform": own.transform, "tap": own.tap, "pool": own.pool, **protocol.features}
    add_fields(p.add_argument_group("features"), FeatureOptions, skip=protocol.skip_features, **defaults)
    if protocol.probe or protocol.config == "LinearConfig":
        add_fields(p.add_argument_group(probe_group), LinearConfig)
    if protocol.config == "LinearConfig":
        add_fields(p.add_argument_group("protocol"), module.LinearProtocol)
    _add_data(p, protocol.formats)
    _add_output(p, protocol.baselines)
    p.set_defaults(func=functools.partial(_run, protocol))


_HELP = "evaluate a checkpoint: linear probe, k-NN, 384px test, copy detection, geolocalization, fairness"
_DESCRIPTION = (
    "Evaluate a frozen trunk with the SEER protocols (seer_spec §5) and write a metrics JSON + HTML report; "
    "compare two runs' metrics."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `seer eval` and its subcommands."""
    parser = subparsers.add_parser("eval", help=_HELP, description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    for name, protocol in PROTOCOLS.items():
        _add_protocol(sub, name, protocol)
    _add_import_copydays(sub)

    p = _command(sub, "compare", _compare)
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

    p = _command(sub, "plan", _plan)
    p.add_argument("--preset", default="rg10b", help="model preset (architecture)")
    p.add_argument(
        "--gpus",
        nargs="+",
        default=["8x40", "1x80", "1x141"],
        help="GPU set-ups as GPUSxGIB; more than one GPU means sharded",
    )
    p.add_argument("--resolution", type=int, nargs="+", default=[224, 384], help="image side(s) in px")
    p.add_argument("--batch", type=int, default=32, help="images per forward per GPU")

    p = _command(sub, "make-benchmark", _make_benchmark)
    p.add_argument("kind", choices=("counting", "copy-detection", "geo", "fairness"), help="which benchmark")
    p.add_argument("--output", required=True, help="folder URI to write images and manifests to")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default: the benchmark's own)")
    _add_importers(sub)
