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


def queued_or_running(job_ids: list[str]) -> set[str]:
    """The ids among `job_ids` that squeue still lists (pending, running, completing...).
    If squeue cannot answer, all of them: a flaky controller must not fail trials."""
    if not job_ids:
        return set()
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
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
