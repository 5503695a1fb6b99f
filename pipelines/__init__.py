"""Kubeflow pipelines: `seer-pretrain` (pipelines/pretrain.py), `seer-evaluate` (pipelines/evaluate.py)
and `seer-finetune` (pipelines/finetune.py).

`python -m pipelines.compile` writes their YAML packages, `python -m pipelines.run.local_run` runs
seer-pretrain on this machine through kfp.local, `python -m pipelines.run.submit` sends a run to a KFP
endpoint (or applies the PyTorchJob), `python -m pipelines.run.schedule` creates the recurring
re-evaluation.
"""

from kfp import dsl

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # the KFP run id, filled in when the run starts
