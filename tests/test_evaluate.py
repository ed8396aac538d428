"""Evaluation runs (`experiment-eval`): a trained run's model measured again, from its run
id, a models:/ URI or its checkpoint file, recorded as a new MLflow run; the source run is
left as it was. A real run from the command line first, then the real command."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from experiment.serving import evaluate
from tests.conftest import (
    FAST,
    all_runs,
    output,
    run_cli,
    sqlite_uri,
    store_overrides,
)

pytestmark = pytest.mark.slow
EVAL = ["-m", "experiment.eval"]


def _snapshot(client: MlflowClient, run_id: str):
    """Everything the store holds of a run, to compare before and after."""
    found = client.get_run(run_id)
    history = {
        k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
        for k in found.data.metrics
    }
    artifacts = sorted(a.path for a in client.list_artifacts(run_id))
    return found.info, found.data.params, found.data.tags, history, artifacts


@pytest.mark.timeout(300)
def test_an_evaluation_is_a_new_run_and_leaves_its_source_as_it_was(tmp_path, monkeypatch, capsys):
    trained = run_cli([*FAST, "trainer.epochs=2", *store_overrides(tmp_path)], tmp_path)
    assert trained.returncode == 0, output(trained)
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    (source,) = all_runs(uri)
    before = _snapshot(client, source.info.run_id)
    mlflow.set_tracking_uri(uri)
    mlflow.register_model(f"runs:/{source.info.run_id}/model", "digits")
    checkpoint = source.data.params["trainer.checkpoint_dir"] + "/best.pt"

    # The command itself once; the other sources through its main() in this process.
    proc = run_cli([*EVAL, source.info.run_id, "--tracking-uri", uri], tmp_path, program=[])
    assert proc.returncode == 0, output(proc)
    assert f"Evaluated {source.info.run_id} on test" in proc.stdout
    monkeypatch.chdir(tmp_path)
    for given, split in [
        ("models:/digits/1", "test"),
        (checkpoint, "test"),
        (source.info.run_id, "val"),
    ]:
        assert evaluate.main([given, "--split", split, "--tracking-uri", uri]) == 0
        assert f"Evaluated {given} on {split}" in capsys.readouterr().out

    evaluations = [r for r in all_runs(uri) if "eval.source" in r.data.tags]
    assert len(evaluations) == 4 and {r.info.status for r in evaluations} == {"FINISHED"}
    # The same weights on the same data: the source's own test figures, and its best
    # validation value on val.
    for evaluation in evaluations:
        assert evaluation.data.tags["eval.source_run_id"] == source.info.run_id
        split = evaluation.data.tags["eval.split"]
        expected = source.data.metrics["test/acc" if split == "test" else "best/value"]
        assert evaluation.data.metrics[f"{split}/acc"] == pytest.approx(expected, abs=1e-6)
        plots = {a.path for a in client.list_artifacts(evaluation.info.run_id, "plots")}
        assert plots == {"plots/confusion_matrix.png"}
    assert _snapshot(client, source.info.run_id) == before


def test_an_evaluation_of_what_is_not_there_is_one_line(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    unknown = "0123456789abcdef0123456789abcdef"
    proc = run_cli([*EVAL, unknown, "--tracking-uri", uri], tmp_path, program=[], split_stderr=True)
    assert proc.returncode == 2, output(proc)
    assert "is no checkpoint file, models:/ URI or run" in proc.stderr, output(proc)
    assert "Traceback" not in proc.stderr, output(proc)
    monkeypatch.chdir(tmp_path)  # the command's main(), in this process
    assert evaluate.main(["models:/nothing/1", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "models:/nothing/1:" in err and "Traceback" not in err
