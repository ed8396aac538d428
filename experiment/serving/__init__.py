"""After training: comparing runs, promoting a sweep's best configuration to a registered
model, the deployable model and predictions from it."""
