"""What users see, checked in a real browser: headless Chromium on the MLflow UI and on
optuna-dashboard, both serving a finished 3-trial sweep.

Screenshots go to each test's tmp dir; with EXPERIMENT_SCREENSHOTS=DIR they are also
copied there (that is how docs/ gets the README's pictures).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.conftest import output, run_cli, sweep_args
from tests.services import chromium, mlflow_server, optuna_dashboard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    store, studies = f"sqlite:///{root / 'mlflow.db'}", f"sqlite:///{root / 'optuna.db'}"
    tracking = [
        f"tracking.uri={store}",
        f"tracking.artifact_root={root / 'artifacts'}",
        "tracking.experiment_name=sweeps",
    ]
    args = sweep_args(studies, tracking, "trainer.epochs=4", n_trials=3, study="browser-sweep")
    proc = run_cli(args, root)
    assert proc.returncode == 0, output(proc)
    return root, store, studies


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium, quit after the test. Taken before any server starts: where it
    is missing the test skips with nothing started."""
    driver = chromium(tmp_path / "profile")
    yield driver
    driver.quit()


def wait_for_text(driver, *texts: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while True:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts) or time.time() > deadline:
            return body
        time.sleep(0.5)


def keep_screenshot(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("EXPERIMENT_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["EXPERIMENT_SCREENSHOTS"]) / path.name)


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_mlflow_ui_lists_the_parent_run_and_its_three_trials(tmp_path, browser, finished_sweep):
    root, store, _ = finished_sweep
    from mlflow import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = sorted(r.info.run_name for r in runs if r is not parent)
    assert len(children) == 3

    driver = browser
    with mlflow_server(tmp_path / "server", backend_uri=store) as server:
        driver.get(f"{server.url}/#/experiments/{experiment.experiment_id}/runs")
        body = wait_for_text(driver, parent.info.run_name)
        assert parent.info.run_name in body, body
        # Trials are collapsed under their parent: expand it as a user would.
        row = next(
            r
            for r in driver.find_elements(By.CSS_SELECTOR, "[role=row]")
            if parent.info.run_name in r.text
        )
        row.find_element(By.CSS_SELECTOR, "button[data-component-id*=runnamecellrenderer]").click()
        body = wait_for_text(driver, *children)
        for name in children:
            assert name in body, (name, body)
        keep_screenshot(driver, tmp_path / "mlflow-sweep-runs.png")

        # The compare view of the three trials, and a trial's logged plots.
        ids = ",".join(f'"{r.info.run_id}"' for r in runs if r is not parent)
        driver.get(
            f'{server.url}/#/compare-runs?runs=[{ids}]&experiments=["{experiment.experiment_id}"]'
        )
        body = wait_for_text(driver, *children, "optimizer.lr")
        assert all(name in body for name in children) and "optimizer.lr" in body, body
        keep_screenshot(driver, tmp_path / "mlflow-compare-trials.png")
    complete = next(r for r in runs if r.data.tags.get("optuna.state") == "COMPLETE")
    plots = {a.path for a in client.list_artifacts(complete.info.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/confusion_matrix.png"}
    if os.environ.get("EXPERIMENT_SCREENSHOTS"):
        local = client.download_artifacts(complete.info.run_id, "plots", str(tmp_path))
        for name in ("learning_curves.png", "confusion_matrix.png"):
            shutil.copy(Path(local) / name, Path(os.environ["EXPERIMENT_SCREENSHOTS"]) / name)


def test_optuna_dashboard_lists_the_study_trials(tmp_path, browser, finished_sweep):
    _, _, studies = finished_sweep
    driver = browser
    with optuna_dashboard(tmp_path / "dashboard", studies) as server:
        driver.get(f"{server.url}/dashboard")
        body = wait_for_text(driver, "browser-sweep")
        assert "browser-sweep" in body, body
        driver.get(f"{server.url}/dashboard/studies/1/trials")
        body = wait_for_text(driver, "Trial 0", "Trial 1", "Trial 2")
        for number in range(3):
            assert f"Trial {number}" in body, body
        assert "optimizer.lr" in body
        keep_screenshot(driver, tmp_path / "optuna-dashboard-trials.png")
