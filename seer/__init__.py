"""SEER on Kubeflow: SwAV self-supervised pretraining of RegNetY trunks, from laptop to 62×8 GPUs."""

__version__ = "0.1.0"
