"""Linear probe on frozen features, VISSL protocol (seer_spec §5.1).

Head = BatchNorm over channels (BatchNorm2d on a pooled map, eps 1e-5, momentum 0.1, affine) →
flatten → Linear. SGD Nesterov, momentum 0.9, weight decay 5e-4 on the Linear (weight and bias),
none on BatchNorm; LR = base_lr × batch / 256 (base 0.01), ×0.1 at each milestone epoch.

Two protocols (`LinearProtocol`): `vissl` (default) trains on fresh RandomResizedCrop + flip crops
every epoch, run through the frozen trunk and streamed batch by batch, as VISSL's linear benchmark
configs; `fast` extracts the training features once with the test transform (no augmentation),
memory-maps them and reuses them every epoch. Features default to the model's published tap
(`--tap published --pool published`: 32Gf res5 pooled 3×1, 64–256Gf avgpool, 10B res4 pooled 2×1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from seer.checkpoints.classifier import save_classifier
from seer.errors import ConfigError
from seer.eval import metrics
from seer.eval.features import PUBLISHED, TrainAugment, augmented_batches, resolve_published
from seer.eval.setup import (
    FeatureOptions,
    Scored,
    Streamed,
    arg,
    check_choices,
    choice,
    classification_scored,
    evaluate,
    ints,
    is_main_rank,
    load_model,
    prepare,
    shared_tempdir,
)

PROTOCOLS = {
    "vissl": "every epoch fresh RandomResizedCrop + flip crops through the frozen trunk, streamed (VISSL's "
    "linear benchmark protocol, seer_spec §5.1)",
    "fast": "one test-transform pass whose features are memory-mapped and reused every epoch (no "
    "augmentation, ~epochs× less trunk compute; not SEER's protocol)",
}


@dataclass
class LinearProtocol:
    """How the probe's training features are made (the `seer eval linear` protocol flags)."""

    protocol: str = choice("vissl", PROTOCOLS)
    train_crop: int = field(
        default=224, metadata=arg("vissl protocol: RandomResizedCrop size of the training crops")
    )
    feature_dir: str | None = field(
        default=None,
        metadata=arg(
            "fast protocol: local folder where the features are memory-mapped as .npy files (default: a "
            "temporary folder, removed at the end)"
        ),
    )

    def validate(self) -> None:
        check_choices(self)
        if self.train_crop < 8:
            raise ConfigError(f"--train-crop {self.train_crop} is too small; use the model input size (224)")

    def describe(self) -> dict[str, Any]:
        """What the metrics document records about the protocol."""
        if self.protocol == "vissl":
            train = f"RandomResizedCrop {self.train_crop} + horizontal flip, fresh every epoch (VISSL)"
        else:
            train = "test transform once, features reused every epoch (fast, no augmentation)"
        return {"protocol": self.protocol, "train_features": train}


@dataclass
class LinearConfig:
    """Probe hyper-parameters (defaults: VISSL's ImageNet linear eval, on a 256 global batch)."""

    epochs: int = field(default=28, metadata=arg("training epochs over the frozen features"))
    milestones: tuple[int, ...] = field(
        default=(8, 16, 24), metadata=arg("epochs where the LR is multiplied by 0.1", parse=ints)
    )
    base_lr: float = field(default=0.01, metadata=arg("learning rate per 256 samples (scaled by batch/256)"))
    batch_size: int = field(
        default=256, metadata=arg("mini-batch size of the probe", flag="--probe-batch-size")
    )
    momentum: float = field(default=0.9, metadata=arg("Nesterov momentum"))
    weight_decay: float = field(default=5e-4, metadata=arg("weight decay of the Linear (BN is not decayed)"))
    seed: int = 0

    @classmethod
    def for_epochs(cls, epochs: int, **kwargs) -> LinearConfig:
        """The default schedule stretched to `epochs`: milestones at 2/7, 4/7 and 6/7 of the run."""
        marks = {m for m in (epochs * 2 // 7, epochs * 4 // 7, epochs * 6 // 7) if 0 < m < epochs}
        return cls(epochs=epochs, milestones=tuple(sorted(marks)), **kwargs)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.base_lr <= 0:
            raise ConfigError("linear probe needs epochs >= 1, batch size >= 1 and a positive learning rate")
        if list(self.milestones) != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            raise ConfigError(f"LR milestones {list(self.milestones)} must be increasing positive epochs")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


class ProbeHead(nn.Module):
    """BatchNorm over the channel axis of (N, C[, h, w]) features, then flatten → Linear."""

    def __init__(self, feature_shape: Sequence[int], n_classes: int) -> None:
        super().__init__()
        channels = feature_shape[0]
        self.norm = nn.BatchNorm2d(channels) if len(feature_shape) == 3 else nn.BatchNorm1d(channels)
        self.fc = nn.Linear(int(np.prod(feature_shape)), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).flatten(1))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of one Linear equal to this head in eval mode (BatchNorm folded in)."""
        norm = self.norm
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        spatial = self.fc.in_features // scale.numel()
        scale_flat, shift_flat = scale.repeat_interleave(spatial), shift.repeat_interleave(spatial)
        weight = self.fc.weight * scale_flat
        bias = self.fc.bias + self.fc.weight @ shift_flat
        return weight.detach().clone(), bias.detach().clone()


@dataclass
class ProbeResult:
    """Scores on the evaluation set plus what the report plots."""

    scores: np.ndarray  # (N, classes) logits
    labels: np.ndarray
    metrics: dict[str, float]
    per_class: np.ndarray
    confusion: np.ndarray
    head: ProbeHead
    loss_history: list[float] = field(default_factory=list)

    @property
    def predictions(self) -> np.ndarray:
        return self.scores.argmax(axis=1)


def classification_result(scores: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """top-1/top-5, per-class accuracy and confusion matrix of a score matrix."""
    pred = scores.argmax(axis=1)
    return {
        "metrics": metrics.topk_accuracy(scores, labels, (1, 5)),
        "per_class": metrics.per_class_accuracy(pred, labels, n_classes),
        "confusion": metrics.confusion_matrix(pred, labels, n_classes),
    }


Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # epoch → (features, labels)


def _fit(
    feature_shape: Sequence[int], n_classes: int, count: int, batches: Batches, config: LinearConfig
) -> tuple[ProbeHead, list[float]]:
    """SGD over `config.epochs` epochs of `batches(epoch)`; `count` samples an epoch."""
    if count < 2:
        raise ConfigError("the linear probe needs at least 2 training samples")
    head = ProbeHead(tuple(feature_shape), n_classes)
    optimizer = torch.optim.SGD(
        [
            {"params": head.norm.parameters(), "weight_decay": 0.0},
            {"params": head.fc.parameters(), "weight_decay": config.weight_decay},
        ],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    head.train()
    for epoch in range(config.epochs):
        total = 0.0
        for xb, yb in batches(epoch):
            if len(yb) < 2:  # BatchNorm cannot train on one sample
                continue
            loss = loss_fn(head(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(yb)
        schedule.step()
        history.append(total / count)
        if not np.isfinite(history[-1]):
            raise ConfigError(
                f"the linear probe diverged (loss {history[-1]}) at LR {config.lr:g}; lower --base-lr"
            )
    return head.eval(), history


def train_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    n_classes: int,
    config: LinearConfig | None = None,
) -> tuple[ProbeHead, list[float]]:
    """Train the BN + Linear head on fixed frozen features ((N, ...) array, memory-mapped or not);
    returns the head and the per-epoch mean loss."""
    config = config or LinearConfig()
    config.validate()
    torch.manual_seed(config.seed)
    y = torch.as_tensor(train_y, dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)

    def batches(_: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(train_x), config.batch_size):
            idx = order[start : start + config.batch_size]
            yield torch.as_tensor(np.asarray(train_x[idx.numpy()]), dtype=torch.float32), y[idx]

    return _fit(train_x.shape[1:], n_classes, len(train_x), batches, config)


def train_probe_streamed(
    train: Streamed,
    train_y: np.ndarray,
    feature_shape: Sequence[int],
    n_classes: int,
    config: LinearConfig,
    augment: TrainAugment,
) -> tuple[ProbeHead, list[float]]:
    """Train the head on fresh augmented crops every epoch (`augmented_batches`); with no trunk (the
    random-features baseline) each crop's features are i.i.d. Gaussian."""
    config.validate()
    torch.manual_seed(config.seed)
    y = torch.as_tensor(train_y, dtype=torch.long)
    noise = torch.Generator().manual_seed(config.seed)

    def batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if train.loaded is None:
            order = np.random.default_rng((config.seed, epoch)).permutation(len(y))
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size]
                yield torch.randn((len(idx), *feature_shape), generator=noise), y[idx]
            return
        for idx, x in augmented_batches(
            train.loaded, train.dataset, train.options, augment, config.batch_size, config.seed, epoch
        ):
            yield x, y[idx]

    return _fit(feature_shape, n_classes, len(y), batches, config)


def predict(head: ProbeHead, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits of the head (eval mode) for (N, ...) features."""
    head.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            out.append(
                head(torch.as_tensor(np.array(features[start : start + batch_size]), dtype=torch.float32))
            )
    return torch.cat(out).numpy() if out else np.zeros((0, head.fc.out_features), np.float32)


def linear_probe(
    train_x: np.ndarray | Streamed,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    n_classes: int,
    config: LinearConfig | None = None,
    augment: TrainAugment | None = None,
) -> ProbeResult:
    """Train on (train_x, train_y), score (val_x, val_y): top-1/top-5, per-class, confusion. A
    `Streamed` train_x trains on `augment`ed crops (the vissl protocol)."""
    config = config or LinearConfig()
    if isinstance(train_x, Streamed):
        head, history = train_probe_streamed(
            train_x, train_y, val_x.shape[1:], n_classes, config, augment or TrainAugment()
        )
    else:
        head, history = train_probe(train_x, train_y, n_classes, config)
    scores = predict(head, val_x)
    result = classification_result(scores, np.asarray(val_y), n_classes)
    return ProbeResult(scores=scores, labels=np.asarray(val_y), head=head, loss_history=history, **result)


def default_options() -> FeatureOptions:
    """The linear probe's features: the model's published tap and pooling, VISSL's 256→224 test crop."""
    return FeatureOptions(tap=PUBLISHED, pool=PUBLISHED)


def run(train_uri: str, val_uri: str, checkpoint: str, **kwargs: Any) -> dict:
    """`seer eval linear`: train and score the probe for the checkpoint and each baseline, write the
    report (settings: `RunSettings` fields; `protocol`: a `LinearProtocol` or its name); returns the
    metrics document, whose config records the protocol and the tap / pool that ran."""
    save_classifier_uri = kwargs.pop("save_classifier_uri", None)
    protocol = kwargs.pop("protocol", None) or LinearProtocol()
    protocol = LinearProtocol(protocol) if isinstance(protocol, str) else protocol
    protocol.validate()
    run_settings, options, config = prepare(checkpoint, LinearConfig, kwargs, default_options)
    train = run_settings.load(train_uri, "classification")
    val = run_settings.load(val_uri, "classification", classes=train.classes)
    loaded = load_model(run_settings, config.seed)
    chosen = {"tap_requested": options.tap, "pool_requested": options.pool}
    options = resolve_published(options, loaded.preset)
    augment = TrainAugment(protocol.train_crop)

    def score(f: dict[str, Any]) -> Scored:
        train_x = f["train"] if isinstance(f["train"], Streamed) else f["train"].stacked()
        r = linear_probe(
            train_x, train.labels, f["val"].stacked(), val.labels, len(train.classes), config, augment
        )
        scored = classification_scored(vars(r), train.classes, train_loss=r.loss_history)
        scored.result = r
        return scored

    record = {**asdict(config), **protocol.describe(), **chosen, "baselines": list(run_settings.baselines)}
    streamed = ("train",) if protocol.protocol == "vissl" else ()
    with shared_tempdir(prefix="seer-linear-") as tmp:
        spill = None if streamed else protocol.feature_dir or tmp
        sets = {"train": train, "val": val}
        doc, main, loaded = evaluate(
            "linear",
            run_settings,
            options,
            sets,
            score,
            record,
            seed=config.seed,
            loaded=loaded,
            streamed=streamed,
            spill_dir=spill,
        )
    if save_classifier_uri:
        if is_main_rank():
            weight, bias = main.result.head.folded()
            save_classifier(
                save_classifier_uri, loaded, weight, bias, options.tap, options.pool, train.classes
            )
        if torch.distributed.is_initialized():  # no rank goes on to read the file before it exists
            torch.distributed.barrier()
    return doc
