"""Entry points that run the pipelines: `local_run` (kfp.local, `make demo`), `submit` (`make pretrain-10b`)
and `schedule` (`make schedule-reeval`)."""
