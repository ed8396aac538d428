"""A real single-node SLURM cluster for the tests: munged with a generated key, slurmctld
and slurmd on 127.0.0.1 (Debian's slurm-wlm and munge, as root), in a temporary folder.

Job states come from squeue and scontrol (no accounting database). KillWait is 2 s so a
cancelled job ends at once (submitit's jobs wait for SIGKILL after SIGTERM). Without the
binaries the test is skipped, except under CI, where `.ci/run` installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import free_port

CONF = """\
ClusterName=experiment-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
KillWait=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[dict[str, str]]:
    """Yields the environment (SLURM_CONF) under which sbatch, squeue and scancel use it."""
    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        message = "SLURM is not installed (apt-get install slurm-wlm munge)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM of the tests runs as root")
    for folder in ("state", "spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(
        CONF.format(
            host=socket.gethostname().split(".")[0],
            root=root,
            ctld_port=free_port(),
            slurmd_port=free_port(),
            cpus=os.cpu_count() or 2,
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    try:
        munged = [
            "munged",
            "-F",
            "-f",
            f"--socket={root}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={root}/munged.pid",
            f"--log-file={root}/munged.log",
            f"--seed-file={root}/munged.seed",
        ]
        commands = {
            "munged": munged,
            "slurmctld": ["slurmctld", "-D", "-f", str(conf)],
            "slurmd": ["slurmd", "-D", "-f", str(conf)],
        }
        for name, command in commands.items():
            with open(root / f"{name}.out", "w") as out:  # their own logs, not the test's
                daemons.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            if name == "munged":
                time.sleep(0.5)  # its socket, before the SLURM daemons authenticate
        _wait_for_idle_node(env, root)
        yield {"SLURM_CONF": str(conf)}
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, timeout=30, check=False)
        _wait_for_empty_queue(env)
        for process in reversed(daemons):
            _stop(process)


def _wait_for_idle_node(env: dict, root: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        if out.stdout.strip() in ("idle", "mixed"):
            return
        time.sleep(0.5)
    log = (root / "slurmctld.log").read_text()[-2000:] if (root / "slurmctld.log").exists() else ""
    raise AssertionError(f"the test SLURM node did not come up within {timeout}s:\n{log}")


def _wait_for_empty_queue(env: dict, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
        if out.returncode != 0 or not out.stdout.strip():
            return
        time.sleep(0.5)
