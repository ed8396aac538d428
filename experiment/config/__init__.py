"""Where the config enters: the schema (typed, with the allowed values on its fields), the
project's config folder, composition for the Python API and the run's typed config."""
