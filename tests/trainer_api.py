"""What the Kubeflow Trainer v2 API (trainer.kubeflow.org/v1alpha1) accepts, as the tests check it.

Relied on: kubeflow/trainer `pkg/apis/trainer/v1alpha1/trainjob_types.go`, `PodSpecPatch` (the pod
fields a TrainJob's `runtimePatches` may override).
"""

from __future__ import annotations

RUNTIME_PATCH_POD_FIELDS = frozenset(
    {
        "serviceAccountName",
        "volumes",
        "initContainers",
        "containers",
        "imagePullSecrets",
        "securityContext",
        "nodeSelector",
        "affinity",
        "tolerations",
        "schedulingGates",
        "terminationGracePeriodSeconds",
    }
)
