"""One rank of a trial's process group: `torchrun ... -m <this module> PAYLOAD_FILE`.

Every rank runs the trial's Hydra job with the same composed config; the task (the
project's `run`, or any task function) joins torchrun's process group itself. Rank 0
alone sends heartbeats for the trial and writes its result for the sweeper.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

from hydra._internal.callbacks import Callbacks
from hydra.core.utils import setup_globals
from hydra.types import HydraContext

from hydra_plugins.experiment_optuna_sweeper.workers import (
    TrialResult,
    _resolve_task,
    execute,
    load_study,
)


def main(payload_file: str) -> None:
    import optuna

    payload = pickle.loads(Path(payload_file).read_bytes())
    main_rank = int(os.environ.get("RANK", "0")) == 0
    setup_globals()  # Hydra's resolvers for the job's config
    task_function = _resolve_task(*payload.task)
    study = load_study(payload.storage, payload.study_name, payload.pruner)
    context = payload.context
    context.trial = optuna.Trial(study, payload.trial_id)
    hydra_context = HydraContext(config_loader=None, callbacks=Callbacks(payload.job_config))
    state, value, error = execute(
        hydra_context, task_function, payload.job_config, context, heartbeat=main_rank
    )
    if main_rank:
        result = TrialResult(context.trial.number, state, value, error)
        partial = Path(payload.result_file + ".partial")
        partial.write_bytes(pickle.dumps(result))
        partial.replace(payload.result_file)  # the sweeper never reads half a result


if __name__ == "__main__":
    main(sys.argv[1])
