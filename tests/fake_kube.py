"""A FAKE Kubernetes API server for the launcher tests — not Kubernetes.

No real API server (or training operator) can run on the test machine, so this threaded
`http.server` on 127.0.0.1 implements just the endpoints `seer.launch.kube` calls, with the JSON
shapes the real API returns:

- POST/GET/DELETE `/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}]` (409 on duplicates,
  404 when missing);
- GET `/api/v1/namespaces/{ns}/pods?labelSelector=k=v,...`;
- GET `/api/v1/namespaces/{ns}/pods/{name}/log?container=&tailLines=&timestamps=`;
- GET `/api/v1/namespaces/{ns}/events?fieldSelector=type=Warning`.

Job behaviour is scripted, not simulated: `FakeKube.script(name, [Step, ...])` gives the states a job
goes through; each GET of the job advances it one step (the last step sticks), so tests are
deterministic and need no sleeping. Pods and master log lines come from the current step.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

JOB_NAME_LABEL = "training.kubeflow.org/job-name"


@dataclass
class Pod:
    """A pod's scripted state: phase, waiting reason (with the image it concerns), restarts, exit code."""

    role: str = "master"  # "master" or "worker"
    index: int = 0
    phase: str = "Running"
    waiting: str = ""
    waiting_message: str = ""
    image: str = "registry.example.com/seer-trainer:0.1.0"
    restarts: int = 0
    last_exit_code: int = 0
    unschedulable: str = ""


@dataclass
class Step:
    """One observation of the job: the condition currently True, its pods and new master log lines."""

    state: str = "Created"  # "" for no conditions yet, else Created/Running/Restarting/Succeeded/Failed
    reason: str = ""
    message: str = ""
    pods: list[Pod] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    warnings: list[tuple[str, str, str]] = field(default_factory=list)  # (object name, reason, message)


def running(n_workers: int = 0, logs: list[str] | None = None, **pod_kw: Any) -> Step:
    """A Running step with a running master and `n_workers` running workers."""
    pods = [Pod("master", **pod_kw)] + [Pod("worker", i, **pod_kw) for i in range(n_workers)]
    return Step("Running", "PyTorchJobRunning", "job is running", pods, logs or [])


class FakeKube:
    """The fake server; use as a context manager, then `api_client()` for the `kubernetes` client."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.scripts: dict[str, list[Step]] = {}
        self.calls: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.created: list[str] = []
        self.events: list[dict[str, Any]] = []  # Warning events emitted by scripted steps
        self.fail_next: list[int] = []  # HTTP statuses to answer the next requests with (e.g. 500)
        self._pos: dict[str, int] = {}
        self._logs: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def api_client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def script(self, name: str, steps: list[Step]) -> None:
        """Set the states job `name` goes through, one per GET; the last one sticks."""
        with self._lock:
            self.scripts[name] = steps
            self._pos[name] = 0

    # -- state -------------------------------------------------------------------------------

    def _step(self, name: str) -> Step | None:
        """The step the job showed at its last GET; None before the first one."""
        if name not in self._pos or self._pos[name] == 0:
            return None
        steps = self.scripts.get(name) or [Step()]
        return steps[min(self._pos[name] - 1, len(steps) - 1)]

    def _advance(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        steps = self.scripts.get(name) or [Step()]
        pos = self._pos.get(name, 0)
        step = steps[min(pos, len(steps) - 1)]
        self._pos[name] = pos + 1
        seen = [s.state for s in steps[: pos + 1] if s.state]
        conditions = [
            {"type": state, "status": "False", "reason": "", "message": ""}
            for state in dict.fromkeys(seen)
            if state not in ("Created", step.state)
        ]
        if seen:
            conditions.insert(
                0, {"type": "Created", "status": "True", "reason": "PyTorchJobCreated", "message": ""}
            )
        if step.state and step.state != "Created":
            conditions.append(
                {"type": step.state, "status": "True", "reason": step.reason, "message": step.message}
            )
        job["status"] = {"conditions": conditions}
        for obj, reason, message in (
            step.warnings if pos < len(steps) else []
        ):  # once per step, like real events
            self.events.append(
                {
                    "metadata": {"name": f"{obj}.{len(self.events)}", "uid": f"ev-{len(self.events)}"},
                    "involvedObject": {"name": obj},
                    "type": "Warning",
                    "reason": reason,
                    "message": message,
                    "count": 1,
                }
            )
        log = self._logs.setdefault(name, [])
        for line in step.logs:
            log.append(f"2026-11-28T05:00:{len(log):02d}.{len(log) * 1000 + 1:09d}Z {line}")

    def _pod_json(self, ns: str, job: str, pod: Pod) -> dict[str, Any]:
        name = f"{job}-{pod.role}-{pod.index}"
        labels = {
            JOB_NAME_LABEL: job,
            "training.kubeflow.org/replica-type": pod.role,
            "training.kubeflow.org/replica-index": str(pod.index),
            "training.kubeflow.org/operator-name": "pytorchjob-controller",
        }
        if pod.role == "master":
            labels["training.kubeflow.org/job-role"] = "master"
        state: dict[str, Any] = {"running": {"startedAt": "2026-11-28T05:00:00Z"}}
        if pod.waiting:
            state = {"waiting": {"reason": pod.waiting, "message": pod.waiting_message}}
        elif pod.phase in ("Succeeded", "Failed"):
            code = 0 if pod.phase == "Succeeded" else pod.last_exit_code or 1
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
        last: dict[str, Any] = {}
        if pod.restarts and pod.last_exit_code:
            last = {"terminated": {"exitCode": pod.last_exit_code, "reason": "Error"}}
        conditions = []
        if pod.unschedulable:
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": pod.unschedulable,
                }
            )
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "pytorch", "image": pod.image}]},
            "status": {
                "phase": pod.phase,
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": "pytorch",
                        "image": pod.image,
                        "imageID": "",
                        "ready": pod.phase == "Running",
                        "restartCount": pod.restarts,
                        "state": state,
                        "lastState": last,
                    }
                ],
            },
        }

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.calls.append((method, path))
            if self.fail_next:
                code = self.fail_next.pop(0)
                return code, _status(code, "Injected", "injected failure")
            parts = path.strip("/").split("/")
            if (
                parts[:3] == ["apis", "kubeflow.org", "v1"]
                and parts[3] == "namespaces"
                and parts[5] == "pytorchjobs"
            ):
                return self._jobs(method, parts[4], parts[6] if len(parts) > 6 else None, body)
            if parts[:2] == ["api", "v1"] and parts[2] == "namespaces" and parts[4] == "events":
                wanted = query.get("fieldSelector", [""])[0]
                items = [e for e in self.events if wanted in ("", f"type={e['type']}")]
                return 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}
            if parts[:2] == ["api", "v1"] and parts[2] == "namespaces" and parts[4] == "pods":
                return self._pods(parts[3], parts[5] if len(parts) > 5 else None, parts[6:], query)
            return 404, _status(404, "NotFound", f"the server could not find the requested resource {path}")

    def _jobs(self, method: str, ns: str, name: str | None, body: Any) -> tuple[int, Any]:
        if method == "POST":
            key = (ns, body["metadata"]["name"])
            if key in self.jobs:
                return 409, _status(
                    409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{key[1]}" already exists'
                )
            job = json.loads(json.dumps(body))
            job["metadata"].update(namespace=ns, uid=f"uid-{len(self.created)}")
            self.jobs[key] = job
            self.created.append(key[1])
            return 201, job
        if name is None:
            items = [j for (n, _), j in self.jobs.items() if n == ns]
            return 200, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJobList", "items": items}
        job = self.jobs.get((ns, name))
        if job is None:
            return 404, _status(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
        if method == "DELETE":
            del self.jobs[(ns, name)]
            self.deleted.append(name)
            return 200, _status(200, "", "", status="Success")
        self._advance(job)
        return 200, job

    def _pods(
        self, ns: str, name: str | None, sub: list[str], query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        pods = [
            self._pod_json(n, job, pod)
            for (n, job) in self.jobs
            if n == ns
            for pod in getattr(self._step(job), "pods", [])
        ]
        if name is None:
            selector = dict(kv.split("=", 1) for kv in (query.get("labelSelector", [""])[0]).split(",") if kv)
            items = [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
        pod = next((p for p in pods if p["metadata"]["name"] == name), None)
        if pod is None:
            return 404, _status(404, "NotFound", f'pods "{name}" not found')
        if sub != ["log"]:
            return 200, pod
        if pod["status"]["phase"] == "Pending":
            return 400, _status(400, "BadRequest", f'container "pytorch" in pod "{name}" is waiting to start')
        lines = self._logs.get(pod["metadata"]["labels"][JOB_NAME_LABEL], [])
        tail = int(query.get("tailLines", ["-1"])[0])
        if tail >= 0:
            lines = lines[-tail:] if tail else []
        if query.get("timestamps", ["false"])[0].lower() != "true":  # Go ParseBool: true, True, 1
            lines = [line.split(" ", 1)[1] for line in lines]
        return 200, "".join(f"{line}\n" for line in lines)


def _status(code: int, reason: str, message: str, status: str = "Failure") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": status,
        "reason": reason,
        "message": message,
        "code": code,
    }


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            code, payload = fake.handle(method, url.path, parse_qs(url.query), body)
            is_text = isinstance(payload, str)
            data = payload.encode() if is_text else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if is_text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler
