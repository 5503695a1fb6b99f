"""Kubeflow pipelines: `seer-pretrain` (pipelines/pretrain.py) and `seer-evaluate` (pipelines/evaluate.py).

`python -m pipelines.compile` writes their YAML packages, `python -m pipelines.run.local_run` runs
seer-pretrain on this machine through kfp.local, `python -m pipelines.run.submit` sends a run to a KFP
endpoint (or applies the PyTorchJob), `python -m pipelines.run.schedule` creates the recurring
re-evaluation.
"""
