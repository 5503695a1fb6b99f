"""Kubeflow pipelines: `seer-pretrain` (pipelines/pretrain.py) and `seer-evaluate` (pipelines/evaluate.py).

`python -m pipelines.compile` writes their YAML packages, `python -m pipelines.local_run` runs
seer-pretrain on this machine through kfp.local, `python -m pipelines.submit` sends a run to a KFP
endpoint (or applies the PyTorchJob), `python -m pipelines.schedule` creates the recurring
re-evaluation.
"""
