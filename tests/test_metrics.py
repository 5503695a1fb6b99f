"""Training metrics: Prometheus names/units, the /metrics endpoint, the JSON-lines log."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from seer import storage
from seer.errors import ConfigError
from seer.metrics import JsonlLog, TrainMetrics, read_jsonl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("seer_train_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_served_over_http_and_move_with_steps() -> None:
    port = _free_port()
    metrics = TrainMetrics(port=port, addr="127.0.0.1")
    try:
        metrics.record_step(1, images=32, step_s=0.5, data_wait_s=0.1, loss=4.0, lr=0.3, gpu_memory_bytes=0)
        first = _scrape(port)
        metrics.record_step(2, images=32, step_s=0.25, data_wait_s=0.0, loss=3.5, lr=0.6, gpu_memory_bytes=7)
        metrics.record_checkpoint(1.5)
        second = _scrape(port)
    finally:
        metrics.close()
    assert first["seer_train_iteration"] == 1 and second["seer_train_iteration"] == 2
    assert first["seer_train_images_total"] == 32 and second["seer_train_images_total"] == 64
    assert second["seer_train_images_per_second"] == pytest.approx(128.0)
    assert second["seer_train_loss"] == 3.5 and second["seer_train_learning_rate"] == 0.6
    assert second["seer_train_step_seconds"] == 0.25 and first["seer_train_data_wait_seconds"] == 0.1
    assert second["seer_train_gpu_memory_bytes"] == 7
    assert second["seer_train_checkpoint_seconds"] == 1.5 and second["seer_train_checkpoints_total"] == 1


def test_two_trainers_in_one_process_do_not_clash() -> None:
    a, b = TrainMetrics(), TrainMetrics()
    a.record_step(5, 1, 1.0, 0.0, 1.0, 0.1, 0)
    assert b.registry.get_sample_value("seer_train_iteration") == 0
    assert a.registry.get_sample_value("seer_train_iteration") == 5


def test_busy_port_is_a_config_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="metrics_port"):
            TrainMetrics(port=s.getsockname()[1], addr="127.0.0.1")


def test_jsonl_log_appends_across_restarts_and_survives_a_torn_line(storage_root: str) -> None:
    uri = storage.join(storage_root, "run/train_log.jsonl")
    log = JsonlLog(uri)
    log.write("step", iteration=1, loss=2.0)
    log.close()
    if storage.local_path(uri) is not None:  # a crash mid-write leaves half a line
        with open(storage.local_path(uri), "a") as fh:
            fh.write('{"event": "step", "itera')
    log = JsonlLog(uri)
    log.write("step", iteration=2, loss=1.5)
    log.flush()
    records = read_jsonl(uri)
    log.close()
    assert [(r["event"], r["iteration"]) for r in records] == [("step", 1), ("step", 2)]
    assert isinstance(records[0]["time"], float)
