"""Tags a run carries that the commands after training read (`experiment-compare`): named
once, with no imports, so those commands stay light."""

PRESET_TAG = "experiment.preset"  # the `experiment=` preset a run was composed with
