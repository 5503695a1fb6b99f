"""Submit, watch, cancel and re-attach to training jobs on Kubernetes.

`JobLauncher` is the seam. `KubeJobLauncher` drives one custom resource through the `kubernetes`
client, described by a `JobKind` (API path, pod labels, how status conditions read):
`PyTorchJobLauncher` for Training Operator v1 `PyTorchJob`s (kubeflow.org/v1), `TrainJobLauncher` for
Kubeflow Trainer v2 `TrainJob`s (trainer.kubeflow.org/v1alpha1).

`run()` is what a pipeline step calls: submit (or re-attach to a live job of the same name and spec
after a launcher restart), stream progress, return on success, raise a `LaunchError` naming the
operator's reason otherwise, and delete the job when the step is cancelled (SIGTERM/Ctrl-C) or gives
up on it (pending or overall timeout, image pull error).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import seer.launch.pytorchjob as pytorchjob
import seer.launch.trainjob as trainjob
from seer.errors import SeerError
from seer.launch.pytorchjob import SPEC_HASH_ANNOTATION

ProgressFn = Callable[[str], None]

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
# Trainer v2 runs a TrainJob as a JobSet: pods carry the JobSet's name and the Job's completion index.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
ACTIVE_STATES = frozenset({"Running", "Restarting"})
_STATE_PRIORITY = ("Failed", "Succeeded", "Suspended", "Restarting", "Running", "Created")
_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z (.*)$", re.S)


class LaunchError(SeerError):
    """A training job could not be submitted, or did not finish successfully."""


class JobFailedError(LaunchError):
    """The operator marked the job Failed."""


class JobTimeoutError(LaunchError):
    """The job stayed pending, or ran, longer than allowed."""


class ImagePullError(LaunchError):
    """A pod of the job cannot pull its image."""


class JobCancelledError(LaunchError):
    """The launcher was interrupted (SIGTERM, Ctrl-C) and deleted the job."""


@dataclass(frozen=True)
class JobHandle:
    """A submitted job; `attached` is True when an existing job of the same name and spec was reused."""

    name: str
    namespace: str
    attached: bool = False


@dataclass
class JobResult:
    """The end of a successful job, with the restarts its pods went through."""

    name: str
    namespace: str
    state: str
    reason: str = ""
    message: str = ""
    restarts: dict[str, int] = field(default_factory=dict)
    attached: bool = False


def job_state(job: Mapping[str, Any]) -> tuple[str, str, str]:
    """(state, reason, message) from a PyTorchJob's status conditions; "Pending" before the operator acts."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true = {c.get("type"): c for c in conditions if c.get("status") == "True"}
    for state in _STATE_PRIORITY:
        if state in true:
            return state, true[state].get("reason") or "", true[state].get("message") or ""
    return "Pending", "", ""


# TrainJob condition types (trainer.kubeflow.org/v1alpha1 trainjob_types.go) → the launcher's states.
_TRAINJOB_STATES = (("Failed", "Failed"), ("Complete", "Succeeded"), ("Suspended", "Suspended"))


def trainjob_state(job: Mapping[str, Any]) -> tuple[str, str, str]:
    """(state, reason, message) of a TrainJob in the PyTorchJob vocabulary.

    A TrainJob only has `Complete`, `Failed` and `Suspended` conditions (metav1.Condition); it is
    Running while any child Job of its JobSet is active (`status.jobsStatus[].active`), Created once the
    controller reported child Jobs, else Pending.
    """
    status = job.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for condition, state in _TRAINJOB_STATES:
        if condition in true:
            return state, true[condition].get("reason") or "", true[condition].get("message") or ""
    jobs = status.get("jobsStatus") or []
    if any((j.get("active") or 0) > 0 for j in jobs):
        return "Running", "", ""
    return ("Created" if jobs else "Pending"), "", ""


@dataclass(frozen=True)
class JobKind:
    """What differs between training-job custom resources, as far as launching and watching go."""

    kind: str
    group: str
    version: str
    plural: str
    container: str  # the training container, whose log is streamed
    job_label: str  # pod label whose value is the job's name
    state: Callable[[Mapping[str, Any]], tuple[str, str, str]]
    role: Callable[[Mapping[str, str]], str]  # "master" for the rank-0 pod
    install_hint: str  # what to install when the CRD is missing

    def rbac_hint(self) -> str:
        return (
            f"the seer-launcher Role from manifests (bound to this step's service account): {self.plural} "
            "create/get/delete, pods list, pods/log get, events list"
        )


def _pytorchjob_role(labels: Mapping[str, str]) -> str:
    return labels.get(REPLICA_TYPE_LABEL, "")


def _trainjob_role(labels: Mapping[str, str]) -> str:
    first = labels.get(COMPLETION_INDEX_LABEL) == "0" and labels.get(JOB_INDEX_LABEL, "0") == "0"
    return "master" if first else "worker"


PYTORCHJOB = JobKind(
    pytorchjob.KIND,
    pytorchjob.GROUP,
    pytorchjob.VERSION,
    pytorchjob.PLURAL,
    pytorchjob.CONTAINER_NAME,
    JOB_NAME_LABEL,
    job_state,
    _pytorchjob_role,
    "install the Kubeflow Training Operator v1 (PyTorchJob CRD)",
)
TRAINJOB = JobKind(
    trainjob.KIND,
    trainjob.GROUP,
    trainjob.VERSION,
    trainjob.PLURAL,
    trainjob.CONTAINER_NAME,
    JOBSET_NAME_LABEL,
    trainjob_state,
    _trainjob_role,
    "install Kubeflow Trainer v2 (TrainJob CRD) and its runtime (manifests/overlays/trainer-v2)",
)


@dataclass(frozen=True)
class PodInfo:
    """What the watcher needs from one pod."""

    name: str
    role: str
    phase: str
    restarts: int
    waiting_reason: str
    waiting_message: str
    waiting_image: str
    last_exit: str
    unschedulable: str

    @classmethod
    def from_pod(
        cls, pod: Mapping[str, Any], role: Callable[[Mapping[str, str]], str] = _pytorchjob_role
    ) -> PodInfo:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        waiting = next((s for s in statuses if (s.get("state") or {}).get("waiting")), None)
        waiting_state = ((waiting or {}).get("state") or {}).get("waiting") or {}
        exits = []
        for s in statuses:
            for key in ("state", "lastState"):
                term = (s.get(key) or {}).get("terminated")
                if term and term.get("exitCode", 0) != 0:
                    exits.append(
                        f"{s.get('name')} exited {term.get('exitCode')} ({term.get('reason') or 'Error'})"
                    )
        sched = next(
            (
                c
                for c in status.get("conditions") or []
                if c.get("type") == "PodScheduled" and c.get("status") == "False"
            ),
            {},
        )
        return cls(
            name=meta.get("name", "?"),
            role=role(meta.get("labels") or {}),
            phase=status.get("phase") or "Pending",
            restarts=sum(int(s.get("restartCount") or 0) for s in statuses),
            waiting_reason=waiting_state.get("reason") or "",
            waiting_message=waiting_state.get("message") or "",
            waiting_image=(waiting or {}).get("image") or "",
            last_exit="; ".join(exits),
            unschedulable=sched.get("message") or sched.get("reason") or "",
        )


class JobLauncher(ABC):
    """Submit/watch/cancel a distributed training job; `run` composes them with cancellation handling."""

    @abstractmethod
    def submit(self, job: Mapping[str, Any]) -> JobHandle:
        """Create the job, or re-attach to a live job with the same name and spec."""

    @abstractmethod
    def watch(
        self,
        handle: JobHandle,
        *,
        timeout_s: float | None = None,
        pending_timeout_s: float = 1800.0,
        on_progress: ProgressFn | None = None,
    ) -> JobResult:
        """Block until the job succeeds (return) or fails, times out, or cannot pull its image (raise)."""

    @abstractmethod
    def cancel(self, handle: JobHandle) -> bool:
        """Delete the job and its pods; False when it no longer existed."""

    def run(
        self,
        job: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        pending_timeout_s: float = 1800.0,
        on_progress: ProgressFn | None = None,
    ) -> JobResult:
        """Submit (or re-attach) and watch; delete the job on SIGTERM/Ctrl-C, timeouts and image pull errors."""
        emit = on_progress or _print
        handle = self.submit(job)
        emit(
            f"{'re-attached to existing' if handle.attached else 'created'} job {handle.namespace}/{handle.name}"
        )
        try:
            with _sigterm_as_interrupt():
                result = self.watch(
                    handle, timeout_s=timeout_s, pending_timeout_s=pending_timeout_s, on_progress=emit
                )
        except KeyboardInterrupt:
            self.cancel(handle)
            raise JobCancelledError(
                f"launcher interrupted; deleted job {handle.namespace}/{handle.name} so it frees its nodes. "
                "Run the step again to start it anew"
            ) from None
        except (JobTimeoutError, ImagePullError):
            self.cancel(handle)
            emit(f"deleted job {handle.namespace}/{handle.name}")
            raise
        return JobResult(**{**result.__dict__, "attached": handle.attached})


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (what Kubernetes/KFP send on cancellation) into KeyboardInterrupt while watching."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print(line: str) -> None:
    print(line, flush=True)


def load_api_client(kube_context: str | None = None) -> Any:
    """A `kubernetes` ApiClient from the pod's service account, else from ~/.kube/config."""
    from kubernetes import client, config

    try:
        if kube_context is None:
            config.load_incluster_config()
            return client.ApiClient()
    except config.ConfigException:
        pass
    try:
        # The client reads $KUBECONFIG once, at import; read it now so a changed environment is honoured.
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"), context=kube_context)
    except (config.ConfigException, OSError) as err:
        raise LaunchError(
            f"no Kubernetes credentials ({err}); run inside a pod with a service account, "
            "or point KUBECONFIG at a kubeconfig (and --kube-context at a context in it)"
        ) from None


class KubeJobLauncher(JobLauncher):
    """`JobLauncher` for one training-job custom resource (`kind`) over a `kubernetes.client.ApiClient`.

    Polls with backoff: every `poll_interval_s` while something changes, growing ×1.5 up to
    `max_poll_interval_s` while nothing does. Each poll reads the job, its pods (by the controller's
    job-name label) and the tail of the master pod's training-container log. While the job is
    Suspended (queued by Kueue) the pending timeout does not run: waiting for quota is not a stuck pod.
    """

    kind: JobKind = PYTORCHJOB

    def __init__(
        self,
        api_client: Any,
        *,
        poll_interval_s: float = 5.0,
        max_poll_interval_s: float = 60.0,
        log_tail_lines: int = 50,
        max_api_retries: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.log_tail_lines = log_tail_lines
        self.max_api_retries = max_api_retries
        self._sleep = sleep
        self._clock = clock

    # -- API calls with error translation ------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the API, retrying server errors and dropped connections with backoff."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        delay = self.poll_interval_s
        for attempt in range(self.max_api_retries + 1):
            try:
                return fn(*args, **kwargs)
            except ApiException as err:
                if err.status in (401, 403):
                    raise LaunchError(
                        f"{what}: forbidden ({err.status} {_api_message(err)}); the service account needs "
                        + self.kind.rbac_hint()
                    ) from None
                if err.status is not None and err.status < 500 and err.status != 429:
                    raise
                failure = f"{err.status} {err.reason}"
            except HTTPError as err:
                failure = str(err)
            if attempt == self.max_api_retries:
                raise LaunchError(
                    f"{what}: the Kubernetes API kept failing ({failure}); check the cluster is reachable"
                )
            self._sleep(delay)
            delay = min(delay * 2, self.max_poll_interval_s)
        raise AssertionError("unreachable")

    def _get(self, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(
                f"get job {namespace}/{name}",
                self._custom.get_namespaced_custom_object,
                self.kind.group,
                self.kind.version,
                namespace,
                self.kind.plural,
                name,
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise LaunchError(
                f"get job {namespace}/{name}: {err.status} {err.reason}: {_api_message(err)}"
            ) from None

    def _pods(self, handle: JobHandle) -> list[PodInfo]:
        resp = self._call(
            f"list pods of {handle.name}",
            self._core.list_namespaced_pod,
            handle.namespace,
            label_selector=f"{self.kind.job_label}={handle.name}",
            _preload_content=False,
        )
        items = json.loads(resp.data).get("items") or []
        pods = (PodInfo.from_pod(p, self.kind.role) for p in items)
        return sorted(pods, key=lambda p: (p.role != "master", p.name))

    def _log_tail(self, handle: JobHandle, pod: str) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        try:
            text = self._call(
                f"read log of {pod}",
                self._core.read_namespaced_pod_log,
                pod,
                handle.namespace,
                container=self.kind.container,
                tail_lines=self.log_tail_lines,
                timestamps=True,
            )
        except (ApiException, LaunchError):
            return []  # the container is not started yet, or the pod just went away: try again next poll
        return text.splitlines()

    def _warnings(self, handle: JobHandle) -> list[tuple[str, str]]:
        """(dedupe key, text) of Warning events about the job, its PodGroup and its pods."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._call(
                f"list events of {handle.name}",
                self._core.list_namespaced_event,
                handle.namespace,
                field_selector="type=Warning",
                _preload_content=False,
            )
        except (ApiException, LaunchError):
            return []  # events only explain; never fail the watch over them
        out = []
        for ev in json.loads(resp.data).get("items") or []:
            obj = (ev.get("involvedObject") or {}).get("name") or ""
            if obj == handle.name or obj.startswith(f"{handle.name}-"):
                key = (ev.get("metadata") or {}).get("uid") or json.dumps(ev, sort_keys=True)
                out.append((key, f"{obj}: {ev.get('reason')}: {ev.get('message')}"))
        return out

    # -- JobLauncher -------------------------------------------------------------------------------

    def submit(self, job: Mapping[str, Any]) -> JobHandle:
        from kubernetes.client.exceptions import ApiException

        name, namespace = job["metadata"]["name"], job["metadata"].get("namespace") or "default"
        try:
            self._call(
                f"create job {namespace}/{name}",
                self._custom.create_namespaced_custom_object,
                self.kind.group,
                self.kind.version,
                namespace,
                self.kind.plural,
                dict(job),
            )
            return JobHandle(name, namespace, attached=False)
        except ApiException as err:
            if err.status == 404:
                raise LaunchError(
                    f"create {self.kind.kind} {namespace}/{name}: {_api_message(err)}; {self.kind.install_hint} "
                    f"and create namespace {namespace} (manifests/README.md)"
                ) from None
            if err.status != 409:
                raise LaunchError(
                    f"create job {namespace}/{name}: {err.status} {_api_message(err)}"
                ) from None
        existing = self._get(name, namespace)
        if existing is None:  # deleted between our create and get: try once more
            return self.submit(job)
        want = (job["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        have = ((existing.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if want is None or want != have:
            raise LaunchError(
                f"a different job named {namespace}/{name} already exists; pick another name or delete it "
                f"(seer launch cancel {name} --namespace {namespace})"
            )
        if (existing.get("metadata") or {}).get("deletionTimestamp"):
            raise LaunchError(f"job {namespace}/{name} is being deleted; run again once it is gone")
        state, reason, message = self.kind.state(existing)
        if state == "Failed":
            raise JobFailedError(
                f"job {namespace}/{name} already exists and failed ({reason}: {message}); delete it "
                f"(seer launch cancel {name} --namespace {namespace}) to run it again"
            )
        return JobHandle(name, namespace, attached=True)

    def cancel(self, handle: JobHandle) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(
                f"delete job {handle.namespace}/{handle.name}",
                self._custom.delete_namespaced_custom_object,
                self.kind.group,
                self.kind.version,
                handle.namespace,
                self.kind.plural,
                handle.name,
                propagation_policy="Background",
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise LaunchError(
                f"delete job {handle.namespace}/{handle.name}: {err.status} {_api_message(err)}"
            ) from None
        return True

    def watch(
        self,
        handle: JobHandle,
        *,
        timeout_s: float | None = None,
        pending_timeout_s: float = 1800.0,
        on_progress: ProgressFn | None = None,
    ) -> JobResult:
        progress = _Progress(on_progress or _print)
        start = pending_since = self._clock()
        interval = self.poll_interval_s
        ref = f"{handle.namespace}/{handle.name}"
        while True:
            job = self._get(handle.name, handle.namespace)
            if job is None:
                raise LaunchError(f"job {ref} was deleted while being watched; run the step again")
            state, reason, message = self.kind.state(job)
            pods = self._pods(handle)
            changed = progress.update(state, reason, message, pods)
            changed |= progress.events(self._warnings(handle))
            for pod in pods:
                if pod.waiting_reason in IMAGE_PULL_REASONS:
                    raise ImagePullError(
                        f"job {ref}: pod {pod.name} cannot pull image {pod.waiting_image or '?'} "
                        f"({pod.waiting_reason}: {pod.waiting_message}); check the image name and tag exist "
                        "in the registry and that the namespace has the pull secret"
                    )
            master = next((p for p in pods if p.role == "master"), None)
            if master and master.phase in ("Running", "Succeeded", "Failed"):
                changed |= progress.log(self._log_tail(handle, master.name))
            if state == "Succeeded":
                return JobResult(handle.name, handle.namespace, state, reason, message, progress.restarts)
            if state == "Failed":
                failures = "; ".join(f"{p.name}: {p.last_exit}" for p in pods if p.last_exit)
                raise JobFailedError(
                    f"job {ref} failed: {reason or 'Failed'}: {message or 'no message from the operator'}"
                    + (f" [{failures}]" if failures else "")
                    + "; see the log above, fix the cause and run the step again"
                )
            now = self._clock()
            elapsed = now - start
            if state == "Suspended":  # queued (Kueue) or suspended by hand: not stuck, just waiting
                pending_since = now
            progress.started |= state in ACTIVE_STATES or any(p.phase == "Running" for p in pods)
            pending = now - pending_since
            if not progress.started and pending > pending_timeout_s:
                why = _pending_reason(pods, progress.last_warning, self.kind.kind.lower())
                raise JobTimeoutError(f"job {ref} still pending after {pending:.0f}s: {why}")
            if timeout_s is not None and elapsed > timeout_s:
                raise JobTimeoutError(
                    f"job {ref} still {state} after {elapsed:.0f}s (timeout {timeout_s:.0f}s); raise the timeout"
                )
            interval = self.poll_interval_s if changed else min(interval * 1.5, self.max_poll_interval_s)
            self._sleep(interval)

    def status(self, handle: JobHandle) -> tuple[str, str, str] | None:
        """The job's (state, reason, message), or None when it does not exist."""
        job = self._get(handle.name, handle.namespace)
        return None if job is None else self.kind.state(job)

    def pod_logs(self, handle: JobHandle, limit_bytes: int = 4 << 20) -> dict[str, str]:
        """The last `limit_bytes` of each pod's training-container log (pods whose log is unreadable are
        left out): what is worth keeping from a failed job before its pods go."""
        from kubernetes.client.exceptions import ApiException

        logs = {}
        for pod in self._pods(handle):
            try:
                logs[pod.name] = self._call(
                    f"read log of {pod.name}",
                    self._core.read_namespaced_pod_log,
                    pod.name,
                    handle.namespace,
                    container=self.kind.container,
                    limit_bytes=limit_bytes,
                )
            except (ApiException, LaunchError):
                continue
        return logs


class PyTorchJobLauncher(KubeJobLauncher):
    """`KubeJobLauncher` for Training Operator v1 `PyTorchJob`s (kubeflow.org/v1)."""

    kind = PYTORCHJOB


class TrainJobLauncher(KubeJobLauncher):
    """`KubeJobLauncher` for Kubeflow Trainer v2 `TrainJob`s (trainer.kubeflow.org/v1alpha1)."""

    kind = TRAINJOB


def _api_message(err: Any) -> str:
    try:
        return json.loads(err.body).get("message") or str(err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


def _pending_reason(pods: list[PodInfo], last_warning: str, kind: str = "pytorchjob") -> str:
    warning = f" Last warning: {last_warning}." if last_warning else ""
    if not pods:
        return (
            "no pods were created; check the training operator (or Trainer/JobSet controller) is running "
            f"(kubectl -n kubeflow get pods) and the job's events (kubectl describe {kind}).{warning}"
        )
    waiting = [p for p in pods if p.phase != "Running"]
    details = [
        f"{p.name}: {p.unschedulable or p.waiting_reason or p.phase}"
        + (f" {p.waiting_message}" if p.waiting_message else "")
        for p in waiting[:5]
    ]
    more = f" (+{len(waiting) - 5} more)" if len(waiting) > 5 else ""
    return (
        f"{len(waiting)}/{len(pods)} pods not running — "
        + "; ".join(details)
        + more
        + "."
        + warning
        + " Free or add capacity (GPUs, node selector/tolerations), or enable gang scheduling so pods do "
        "not hold nodes while waiting"
    )


def _log_key(line: str) -> tuple[str, str] | None:
    """Sortable timestamp key and text of a `timestamps=true` log line (RFC 3339, nanosecond fraction)."""
    m = _TS_RE.match(line)
    if not m:
        return None
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}", m.group(3)


class _Progress:
    """Turns successive observations into progress lines, only emitting what changed."""

    def __init__(self, emit: ProgressFn) -> None:
        self.emit = emit
        self.started = False
        self.restarts: dict[str, int] = {}
        self._state: tuple[str, str, str] | None = None
        self._phases = ""
        self._exits: dict[str, str] = {}
        self._last_log = ""
        self._seen_events: set[str] = set()
        self.last_warning = ""

    def update(self, state: str, reason: str, message: str, pods: list[PodInfo]) -> bool:
        changed = False
        if (state, reason, message) != self._state:
            self._state = (state, reason, message)
            self.emit(f"job {state}" + (f" ({reason}: {message})" if reason or message else ""))
            changed = True
        counts: dict[str, int] = {}
        for pod in pods:
            label = pod.waiting_reason or pod.phase
            counts[label] = counts.get(label, 0) + 1
        phases = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        if phases and phases != self._phases:
            self._phases = phases
            self.emit(f"pods: {phases}")
            changed = True
        for pod in pods:
            if pod.restarts > self.restarts.get(pod.name, 0):
                self.emit(
                    f"pod {pod.name} restarted ({pod.restarts} restarts; {pod.last_exit or 'no exit code'})"
                )
                changed = True
            elif pod.last_exit and self._exits.get(pod.name) != pod.last_exit:
                self.emit(f"pod {pod.name}: {pod.last_exit}")
                changed = True
            self.restarts[pod.name] = max(pod.restarts, self.restarts.get(pod.name, 0))
            if pod.last_exit:
                self._exits[pod.name] = pod.last_exit
        return changed

    def events(self, warnings: list[tuple[str, str]]) -> bool:
        new = [(key, text) for key, text in warnings if key not in self._seen_events]
        for key, text in new:
            self._seen_events.add(key)
            self.last_warning = text
            self.emit(f"warning {text}")
        return bool(new)

    def log(self, lines: list[str]) -> bool:
        changed = False
        for line in lines:
            parsed = _log_key(line)
            if parsed is None or parsed[0] <= self._last_log:
                continue
            self._last_log = parsed[0]
            self.emit(f"[master] {parsed[1]}")
            changed = True
        return changed
