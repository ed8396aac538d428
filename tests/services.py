"""Real servers for the tests, each started in a temporary folder and stopped afterwards:
a PostgreSQL server (the Debian package's binaries, a throwaway cluster) and an MLflow
tracking server. Both listen on 127.0.0.1 only, on a free port.

Without the PostgreSQL binaries the tests that need them are skipped, except under CI
(`CI` set), where `.ci/run` installs them and a skip would hide a missing install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_USER, POSTGRES_PASSWORD = "experiment", "pg-s3cret-Pa55"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    postgres = shutil.which("postgres")
    return Path(postgres).parent if postgres else None


def _missing(what: str):
    message = f"{what} is not installed (apt-get install postgresql)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class PostgresServer:
    """A running PostgreSQL server: its SQLAlchemy `url` (password included); `stop()` and
    `start()` make an outage of it."""

    def __init__(self, url: str, pg_ctl: list[str], options: str, log: Path):
        self.url, self._pg_ctl, self._options, self._log = url, pg_ctl, options, log

    def stop(self) -> None:
        subprocess.run([*self._pg_ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(
            [*self._pg_ctl, "-o", self._options, "-l", str(self._log), "-w", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@contextlib.contextmanager
def postgres_server(root: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server with user `experiment` (password auth over TCP) and database
    `optuna`."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        _missing("PostgreSQL")
    # PostgreSQL refuses to run as root: run it as the Debian package's postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data, sockets = root / "pgdata", root / "pgsocket"
    root.mkdir(parents=True, exist_ok=True)
    sockets.mkdir()
    password_file = root / "pgpass"
    password_file.write_text(POSTGRES_PASSWORD + "\n")
    if as_user:
        uid = pwd.getpwnam("postgres").pw_uid
        for path in (root, sockets, password_file):
            os.chown(path, uid, -1)
    port = free_port()
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            POSTGRES_USER,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
        ],
        check=True,
        capture_output=True,
    )
    password_file.unlink()  # initdb has it; no file keeps it
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets}"
    # The server's output goes to a log file: a pipe would stay open as long as it runs.
    server_log = root / "server.log"
    server_log.touch()
    if as_user:
        os.chown(server_log, uid, -1)
    url = f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{port}/optuna"
    server = PostgresServer(
        url, [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)], options, server_log
    )
    server.start()
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "createdb"), "-h", str(sockets), "-p", str(port)]
            + ["-U", POSTGRES_USER, "optuna"],
            check=True,
            capture_output=True,
        )
        yield server
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )


class Server:
    """A command serving HTTP on 127.0.0.1:`port`, in its own process group, its output in
    `root/server.log`; `start()` returns once `health_path` answers 200."""

    def __init__(self, root: Path, command: list[str], port: int, health_path: str = "/", env=None):
        self.root, self.command, self.port, self.health_path = root, command, port, health_path
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log = None

    def start(self, timeout: float = 90):
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = open(self.root / "server.log", "a")  # noqa: SIM115  closed in stop()
        self.process = subprocess.Popen(
            self.command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        try:
            self._wait_until_healthy(timeout)
        except BaseException:  # a server that never answered is stopped all the same
            self.stop()
            raise
        return self

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process.poll() is None, (self.root / "server.log").read_text()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + self.health_path, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"{self.command[0]} did not answer within {timeout}s")

    def stop(self) -> None:
        """Kill the server's whole process group (its workers too) and wait for it."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait(timeout=30)
        if self.log is not None:
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _venv_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def mlflow_server(root: Path, backend_uri: str | None = None) -> Server:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and an artifact root under `root`."""
    port = free_port()
    command = [_venv_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += [
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri or f"sqlite:///{root / 'mlflow.db'}",
    ]
    command += ["--artifacts-destination", str(root / "artifacts")]
    return Server(root, command, port, "/health")


def model_server(root: Path, model_uri: str, tracking_uri: str) -> Server:
    """`mlflow models serve` of `model_uri` (e.g. models:/NAME@champion) in this
    environment (--env-manager local) on 127.0.0.1; its uvicorn is this venv's."""
    port = free_port()
    command = [_venv_tool("mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Server(root, command, port, "/ping", env=env)


def optuna_dashboard(root: Path, storage_url: str) -> Server:
    port = free_port()
    command = [_venv_tool("optuna-dashboard"), storage_url, "--host", "127.0.0.1"]
    return Server(root, [*command, "--port", str(port)], port, "/dashboard")


def chromium(profile: Path):
    """Headless Debian Chromium driven by Selenium through Debian's chromedriver."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        message = "Chromium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
