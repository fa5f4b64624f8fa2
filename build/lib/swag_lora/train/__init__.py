"""Training: the loop (loop.py), when and what SWAG collects (collector.py), the learning rate (schedule.py),
checkpoints (checkpoint.py), the run directory's records (records.py), pre-emption (signals.py), and SWAG for a
`transformers.Trainer` (callback.py)."""
