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

from experiment.sweep.executors import run_payload
from experiment.system import durable


def main(payload_file: str) -> None:
    payload = pickle.loads(Path(payload_file).read_bytes())
    main_rank = int(os.environ.get("RANK", "0")) == 0
    result = run_payload(payload, heartbeat=main_rank)
    if main_rank:
        # Durable and whole: the sweeper never reads half a result, even after a crash.
        durable.write_bytes(Path(payload.result_file), pickle.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
