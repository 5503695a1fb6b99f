"""Full-network fine-tuning (`seer finetune`) on the shared training engine (`seer.train.engine`).

`config` (recipes under `seer/recipes/finetune/`), `model` (trunk + `clf.0` head), `data` (labelled
set and resumable loader), `task` (the engine `Task`: model, optimizer, schedule, loss), `run`
(`run_finetune`: train, then export the classifier file and its sliced form), `plan` (memory),
`register` (registry entry with lineage), `cli`.
"""
