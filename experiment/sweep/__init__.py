"""The sweep engine behind `hydra/sweeper=experiment_optuna`: the study, the loop over
trials, the places trials run (in process, worker processes, torchrun groups, SLURM jobs),
repeats, constraints, stop conditions and the sweep's report.

`context` is the one module a run imports from here (a trial's view of its sweep); it
imports no Optuna, so a single run stays free of the engine."""
