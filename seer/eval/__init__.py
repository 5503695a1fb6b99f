"""Evaluation of frozen SEER trunks (seer_spec §5), one module per protocol.

`datasets` (validated eval sets from any storage URI), `features` (cached trunk features),
`linear`, `knn`, `test384`, `copy_detection`, `geolocalization`, `fairness` (each with a `run(...)`
behind `seer eval <name>`), `metrics` (shared metric functions) and `report` (metrics JSON, HTML
report, `compare`).
"""
