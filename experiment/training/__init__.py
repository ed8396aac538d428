"""Training: the run's parts built from config, the loop (`engine`), tasks (loss, metrics,
predictions), callbacks, checkpoints and resume, the run itself (`run`)."""
