"""The training engine: the LightningModule, how a run's objects are built from its config or a
checkpoint, precision, devices, and Lightning's tuners."""
