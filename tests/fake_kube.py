"""A FAKE Kubernetes API server for the launcher tests — not Kubernetes.

No real API server (or training operator) can run on the test machine, so this threaded
`http.server` on 127.0.0.1 implements just the endpoints `seer.launch.kube` calls, with the JSON
shapes the real API returns:

- POST/GET/DELETE `/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}]` and
  `/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs[/{name}]` (409 AlreadyExists on
  duplicates, 404 NotFound when missing, 404 for the whole path when the CRD is not installed);
- GET `/api/v1/namespaces/{ns}/pods?labelSelector=k=v,...`;
- GET `/api/v1/namespaces/{ns}/pods/{name}/log?container=&tailLines=&timestamps=`;
- GET `/api/v1/namespaces/{ns}/events?fieldSelector=type=Warning`.

Status follows each API: a PyTorchJob has `Created/Running/Restarting/Succeeded/Failed/Suspended`
conditions (training-operator v1, status "True"/"False"); a TrainJob only `Complete`/`Failed`/
`Suspended` as `metav1.Condition`s copied from its JobSet (reasons `AllJobsCompleted`, `FailedJobs`;
trainer.kubeflow.org/v1alpha1 trainjob_types.go and the jobset plugin's Status), plus
`status.jobsStatus[]` with the child Jobs' active/succeeded/failed counts. TrainJob pods carry the
JobSet labels (`jobset.sigs.k8s.io/jobset-name`, `batch.kubernetes.io/job-completion-index`) and a
`node` container, as the Trainer's torch runtimes create them.

With `rbac=[rules]` (a Role's `rules`) every request is authorised like the API server's RBAC
authorizer: verb from method and path (GET of a collection is `list`), resource with subresource
(`pods/log`), denied with 403 Forbidden and the server's message; `verbs_used` records what was asked.

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
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
SERVICE_ACCOUNT = "system:serviceaccount:seer:default-editor"
KINDS = {
    ("kubeflow.org", "v1", "pytorchjobs"): "PyTorchJob",
    ("trainer.kubeflow.org", "v1alpha1", "trainjobs"): "TrainJob",
}


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

    def __init__(
        self, crds: tuple[str, ...] = ("pytorchjobs", "trainjobs"), rbac: list[dict[str, Any]] | None = None
    ) -> None:
        self.crds = set(crds)
        self.rbac = rbac
        self.verbs_used: set[tuple[str, str, str]] = set()  # (apiGroup, resource, verb)
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
        if job["kind"] == "TrainJob":
            job["status"] = _trainjob_status(step, job["spec"]["trainer"].get("numNodes", 1))
            self._emit(steps, pos, step, name)
            return
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
        self._emit(steps, pos, step, name)

    def _emit(self, steps: list[Step], pos: int, step: Step, name: str) -> None:
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

    def _pod_json(self, ns: str, job: str, pod: Pod, kind: str = "PyTorchJob") -> dict[str, Any]:
        if kind == "TrainJob":  # one indexed Job "node" of the JobSet; rank 0 is completion index 0
            index = 0 if pod.role == "master" else pod.index + 1
            name, container = f"{job}-node-0-{index}-x{index:04d}", "node"
            labels = {
                JOBSET_NAME_LABEL: job,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "jobset.sigs.k8s.io/job-index": "0",
                "batch.kubernetes.io/job-completion-index": str(index),
                "trainer.kubeflow.org/trainjob-ancestor-step": "trainer",
            }
        else:
            name, container = f"{job}-{pod.role}-{pod.index}", "pytorch"
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
            "spec": {"containers": [{"name": container, "image": pod.image}]},
            "status": {
                "phase": pod.phase,
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": container,
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
            denied = self._authorize(method, parts)
            if denied:
                return denied
            if parts[0] == "apis" and len(parts) > 5 and tuple(parts[1:3] + parts[5:6]) in KINDS:
                if parts[5] not in self.crds:  # no CRD: the API server does not know the path at all
                    return 404, _status(404, "NotFound", "the server could not find the requested resource")
                kind = KINDS[tuple(parts[1:3] + parts[5:6])]
                return self._jobs(method, parts[4], parts[6] if len(parts) > 6 else None, body, kind)
            if parts[:2] == ["api", "v1"] and parts[2] == "namespaces" and parts[4] == "events":
                wanted = query.get("fieldSelector", [""])[0]
                items = [e for e in self.events if wanted in ("", f"type={e['type']}")]
                return 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}
            if parts[:2] == ["api", "v1"] and parts[2] == "namespaces" and parts[4] == "pods":
                return self._pods(parts[3], parts[5] if len(parts) > 5 else None, parts[6:], query)
            return 404, _status(404, "NotFound", f"the server could not find the requested resource {path}")

    def _authorize(self, method: str, parts: list[str]) -> tuple[int, Any] | None:
        """RBAC: None when allowed (or no rules are set), else the API server's 403 answer."""
        if parts[0] == "api":
            group, ns, rest = "", parts[3], parts[4:]
        else:
            group, ns, rest = parts[1], parts[4], parts[5:]
        resource = "/".join([rest[0], *rest[2:3]])
        verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(method)
        verb = verb or ("get" if len(rest) > 1 else "list")
        self.verbs_used.add((group, resource, verb))
        if self.rbac is None:
            return None
        for rule in self.rbac:
            if (
                group in rule.get("apiGroups", [])
                and resource in rule.get("resources", [])
                and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
            ):
                return None
        plural = f"{resource}.{group}" if group else resource
        return 403, _status(
            403,
            "Forbidden",
            f'{plural} is forbidden: User "{SERVICE_ACCOUNT}" cannot {verb} resource "{rest[0]}" in API '
            f'group "{group}" in the namespace "{ns}"',
        )

    def _jobs(
        self, method: str, ns: str, name: str | None, body: Any, kind: str = "PyTorchJob"
    ) -> tuple[int, Any]:
        plural = {v: k for k, v in KINDS.items()}[kind]
        resource = f"{plural[2]}.{plural[0]}"
        if method == "POST":
            key = (ns, body["metadata"]["name"])
            if key in self.jobs:
                return 409, _status(409, "AlreadyExists", f'{resource} "{key[1]}" already exists')
            job = json.loads(json.dumps(body))
            job["metadata"].update(namespace=ns, uid=f"uid-{len(self.created)}")
            self.jobs[key] = job
            self.created.append(key[1])
            return 201, job
        if name is None:
            items = [j for (n, _), j in self.jobs.items() if n == ns and j["kind"] == kind]
            return 200, {"apiVersion": f"{plural[0]}/{plural[1]}", "kind": f"{kind}List", "items": items}
        job = self.jobs.get((ns, name))
        if job is None or job["kind"] != kind:
            return 404, _status(404, "NotFound", f'{resource} "{name}" not found')
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
            self._pod_json(n, job, pod, obj["kind"])
            for (n, job), obj in self.jobs.items()
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
        labels = pod["metadata"]["labels"]
        if query.get("container", [None])[0] not in (None, pod["spec"]["containers"][0]["name"]):
            return 400, _status(
                400, "BadRequest", f"container {query['container'][0]} is not valid for pod {name}"
            )
        lines = self._logs.get(labels.get(JOB_NAME_LABEL) or labels[JOBSET_NAME_LABEL], [])
        tail = int(query.get("tailLines", ["-1"])[0])
        if tail >= 0:
            lines = lines[-tail:] if tail else []
        if query.get("timestamps", ["false"])[0].lower() != "true":  # Go ParseBool: true, True, 1
            lines = [line.split(" ", 1)[1] for line in lines]
        return 200, "".join(f"{line}\n" for line in lines)


# The launcher's scripted states → TrainJob conditions (type, reason) copied from the JobSet.
_TRAINJOB_CONDITIONS = {
    "Succeeded": ("Complete", "AllJobsCompleted"),
    "Failed": ("Failed", "FailedJobs"),
    "Suspended": ("Suspended", "Suspended"),
}


def _trainjob_status(step: Step, nodes: int) -> dict[str, Any]:
    """A TrainJob's status for a scripted step: metav1.Conditions and the child Jobs' counts."""
    conditions = []
    if step.state in _TRAINJOB_CONDITIONS:
        kind, reason = _TRAINJOB_CONDITIONS[step.state]
        conditions.append(
            {
                "type": kind,
                "status": "True",
                "reason": step.reason or reason,
                "message": step.message,
                "lastTransitionTime": "2026-11-28T05:00:00Z",
            }
        )
    if not step.state:
        return {}
    active = int(step.state in ("Running", "Restarting"))
    done = {"Succeeded": "succeeded", "Failed": "failed", "Suspended": "suspended"}.get(step.state)
    counts = {"ready": 0, "succeeded": 0, "failed": 0, "active": active, "suspended": 0}
    if done:
        counts[done] = 1
    return {"conditions": conditions, "jobsStatus": [{"name": "node", **counts}]}


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
