"""Lightning callbacks the callbacks config group names: progress and speed, checkpointing and
resume, EMA and Lookahead, Mixup/CutMix, gradual unfreezing, TensorBoard dashboards."""
