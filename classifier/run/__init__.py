"""What a run directory is: its checkpoints, its lock, its loggers, preemption, and a sweep's summary."""
