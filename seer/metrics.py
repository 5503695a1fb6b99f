"""Training observability: Prometheus metrics, a JSON-lines log and the final summary.

`TrainMetrics` owns a fresh `CollectorRegistry` (so several trainers in one process never clash) and
serves it on `/metrics` when given a port (0 = off). Names use base units; counters end in `_total`.
`JsonlLog` appends one JSON object per line to a URI: local paths are appended to directly, object
storage gets a local copy that `flush()` uploads (call it at checkpoints and at the end).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from seer import storage
from seer.errors import ConfigError

PREFIX = "seer_train"


class TrainMetrics:
    """Prometheus gauges and counters for one training process."""

    def __init__(self, port: int = 0, addr: str = "0.0.0.0") -> None:
        self.registry = r = CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, registry=r)

        self.iteration = gauge("iteration", "Last completed training iteration.")
        self.images_per_second = gauge(
            "images_per_second", "Global training throughput (images/s, all ranks)."
        )
        self.step_seconds = gauge("step_seconds", "Wall time of the last iteration.")
        self.data_wait_seconds = gauge("data_wait_seconds", "Time the last iteration waited for its batch.")
        self.loss = gauge("loss", "SwAV loss of the last iteration (mean over ranks).")
        self.learning_rate = gauge("learning_rate", "Learning rate of the last iteration.")
        self.gpu_memory_bytes = gauge(
            "gpu_memory_bytes", "Peak GPU memory allocated by this process (0 on CPU)."
        )
        self.checkpoint_seconds = gauge("checkpoint_seconds", "Wall time of the last checkpoint save.")
        self.embedding_cosine = gauge(
            "embedding_cosine",
            "Mean pairwise cosine of one crop's embeddings at the last logged step (mean over ranks); "
            "near 1 means collapse.",
        )
        self.code_entropy = gauge(
            "code_entropy_ratio",
            "Mean per-sample entropy of the SwAV codes / ln K at the last logged step (mean over ranks); "
            "near 1 means uniform codes (collapse).",
        )
        self.images = counter("images", "Images trained on (all ranks).")
        self.collapse_warnings = counter(
            "collapse_warnings", "Logged steps whose collapse statistics crossed a threshold."
        )
        self.checkpoints = counter("checkpoints", "Checkpoints saved.")
        # Faults: totals over the whole run (earlier attempts read back from train_log.jsonl).
        self.restarts = counter("restarts", "Times the run was restarted.")
        self.faults = counter("faults", "Restarts after a failure (not after a preemption save).")
        self.preemption_saves = counter("preemption_saves", "Checkpoints written on SIGTERM before exiting.")
        self.failed_saves = counter("failed_saves", "Checkpoint saves that failed (training went on).")
        self.time_lost_seconds = counter(
            "time_lost_seconds",
            "Wall time lost to restarts: downtime plus work redone since the resumed checkpoint.",
        )
        self._server = None
        if port < 0 or port > 65535:
            raise ConfigError(f"metrics port {port} is out of range; use 1-65535, or 0 to disable /metrics")
        if port:
            try:
                self._server, _ = start_http_server(port, addr=addr, registry=r)
            except OSError as err:
                raise ConfigError(
                    f"cannot serve /metrics on port {port} ({err}); set train.metrics_port to a free port or 0"
                ) from err

    def record_step(
        self,
        iteration: int,
        images: int,
        step_s: float,
        data_wait_s: float,
        loss: float,
        lr: float,
        gpu_memory_bytes: int,
    ) -> None:
        """Update every per-step metric at once."""
        self.iteration.set(iteration)
        self.images.inc(images)
        self.images_per_second.set(images / step_s if step_s > 0 else 0.0)
        self.step_seconds.set(step_s)
        self.data_wait_seconds.set(data_wait_s)
        self.loss.set(loss)
        self.learning_rate.set(lr)
        self.gpu_memory_bytes.set(gpu_memory_bytes)

    def record_collapse(self, embedding_cosine: float, code_entropy: float, warned: bool) -> None:
        """Collapse statistics of a logged step (see `seer.ssl.collapse`)."""
        self.embedding_cosine.set(embedding_cosine)
        self.code_entropy.set(code_entropy)
        if warned:
            self.collapse_warnings.inc()

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_seconds.set(seconds)
        self.checkpoints.inc()

    def record_faults(
        self, restarts: int, faults: int, preemption_saves: int, failed_saves: int, time_lost_s: float
    ) -> None:
        """Add fault totals (at start: the run's history; later: this attempt's own events)."""
        self.restarts.inc(restarts)
        self.faults.inc(faults)
        self.preemption_saves.inc(preemption_saves)
        self.failed_saves.inc(failed_saves)
        self.time_lost_seconds.inc(time_lost_s)

    def close(self) -> None:
        """Stop the HTTP server, if any."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class JsonlLog:
    """Append-only JSON-lines log at a storage URI (existing lines are kept on restart)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        local = storage.local_path(uri)
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            self._path, self._remote = Path(local), False
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="seer-log-")
            self._path, self._remote = Path(self._tmp.name) / "log.jsonl", True
            if storage.exists(uri):
                storage.get(uri, self._path)
        torn = (
            self._path.exists() and self._path.stat().st_size and not self._path.read_bytes().endswith(b"\n")
        )
        self._fh = self._path.open("a", encoding="utf-8")
        if torn:  # a crash cut the last line: end it so the next record stays parseable
            self._fh.write("\n")

    def write(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()

    def flush(self) -> None:
        """Make the log visible at its URI (uploads the local copy for object storage)."""
        self._fh.flush()
        if self._remote:
            storage.put(str(self._path), self.uri)

    def close(self) -> None:
        self.flush()
        self._fh.close()
        if self._remote:
            self._tmp.cleanup()


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    """All records of a JSON-lines log (a torn last line from a crash is skipped)."""
    records = []
    for line in storage.read_bytes(uri).decode("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
