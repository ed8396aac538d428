"""Everything MLflow: the run's tracker, its record (params, tags, lineage), its figures."""
