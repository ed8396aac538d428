"""What the SLURM controller says about jobs, through squeue and scontrol.

Both answer without accounting (sacct needs a database or a storage plugin that many
clusters and single-node set-ups lack). scontrol knows a finished job for MinJobAge
seconds (300 by default); after that its state reads UNKNOWN.
"""

from __future__ import annotations

import logging
import re
import subprocess

log = logging.getLogger(__name__)


# Every state of a job that has not ended, named rather than left to squeue's default,
# which its manual gives as pending, running and completing only. (SLURM 22.05 with `-j`
# also lists suspended jobs, and a requeued one reads COMPLETING then PENDING; other
# versions and settings need not, and a job being requeued, held or suspended must not
# look ended to the sweep.)
UNFINISHED_STATES = (
    "PENDING,RUNNING,COMPLETING,CONFIGURING,REQUEUED,REQUEUE_FED,REQUEUE_HOLD,RESIZING,"
    "RESV_DEL_HOLD,SIGNALING,SPECIAL_EXIT,STAGE_OUT,STOPPED,SUSPENDED"
)


def queued_or_running(job_ids: list[str]) -> set[str]:
    """The ids among `job_ids` that squeue still lists in a state that has not ended
    (pending, running, being requeued, suspended...). If squeue cannot answer, all of
    them: a flaky controller must not fail trials."""
    if not job_ids:
        return set()
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-t", UNFINISHED_STATES, "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("squeue did not answer (%s); asking again", err)
        return set(job_ids)
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        log.warning("squeue failed (%s); asking again", out.stderr.strip()[:200])
        return set(job_ids)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def job_state(job_id: str) -> str:
    """COMPLETED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, FAILED, OUT_OF_MEMORY, ...;
    UNKNOWN once the controller has forgotten the job."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    match = re.search(r"JobState=(\S+)", out.stdout)
    return match.group(1) if match else "UNKNOWN"
