"""One run on several processes with torchrun (gloo on this CPU machine): the same training
as one process, one MLflow run, restarts that resume, lost ranks that end the run, bad
input that every rank reports, and sweeps whose trials are process groups."""

from __future__ import annotations

import ast
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torch.distributed as dist
from mlflow import MlflowClient
from optuna.trial import TrialState
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from experiment.errors import DistributedError
from experiment.runtime import distributed
from experiment.training.checkpoint import load_checkpoint
from experiment.training.engine import FitState, evaluate
from experiment.training.tasks import Classification, Regression
from tests.conftest import (
    FAST,
    all_runs,
    files_holding,
    output,
    run_cli,
    running_trial_run,
    sqlite_uri,
    start_cli,
    stop_group,
    sweep_args,
    tracking_overrides,
    wait_for_line,
)

pytestmark = pytest.mark.slow


def torchrun(*options: str) -> list[str]:
    return ["-m", "torch.distributed.run", *options, "-m", "experiment.train"]


TWO_RANKS = torchrun("--standalone", "--nproc_per_node=2")
# Training that two ranks and one process must do identically: no batch norm (CPU ranks
# keep per-rank batch statistics) and no dropout (each rank draws masks for its own half).
EXACT = ["trainer.deterministic=true", "model.batch_norm=false", "model.dropout=0"]


def _rank_sees(rank: int, init_file: str, out_dir: str) -> None:
    """One of two real gloo ranks: what rank 0's callbacks decide, and what each sees."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ranks = distributed.Ranks(rank, 2, 2, "gloo")
    calls, seen = [], []

    def report(state: FitState) -> None:  # as a trial's pruning report does
        calls.append(state.epoch)
        if state.epoch == 0:
            state.stop_reason = "early stop"
        if state.epoch == 1:
            raise optuna.TrialPruned("pruned at step 2")

    callback = distributed.OnMainRank([report], ranks)
    state = FitState(epoch=0)
    callback(state)
    seen.append(state.stop_reason)
    state.epoch = 1
    try:
        callback(state)
    except optuna.TrialPruned as err:
        seen.append(f"pruned: {err}")
    total = torch.tensor([rank + 1.0])
    distributed.reduced("summing", lambda: dist.all_reduce(total))
    seen.append(total.item())
    try:
        distributed.same_config_on_all_ranks("config-a" if rank == 0 else "config-b")
    except DistributedError as err:
        seen.append(str(err).split(":")[0])
    seen.append(_task_metrics(rank, world=2))  # each rank evaluates its half
    Path(out_dir, f"rank{rank}.txt").write_text(repr((calls, seen)))
    torch.save(_accumulated_under_ddp(rank), Path(out_dir, f"accumulated{rank}.pt"))
    dist.destroy_process_group()


def _accumulation_case():
    """A model without batch norm (float64) and 23 samples: optimizer steps of 12 and 11."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(23, 5, dtype=torch.float64, generator=gen)
    return model, x, torch.randint(0, 3, (23,), generator=gen)


def _accumulated_steps(model, batches, accumulate: int) -> None:
    from experiment.training.engine import FitSettings, train_one_epoch

    settings = FitSettings(
        epochs=1,
        device=torch.device("cpu"),
        task=Classification(),
        num_outputs=3,
        accumulate=accumulate,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    train_one_epoch(model, batches, optimizer, settings)


def _accumulated_under_ddp(rank: int) -> dict:
    """This rank's 4 batches (every other 3 samples; rank 1's last holds 2), 2 accumulated
    a step under DDP: the parameters it ends with and the gradient all-reduces DDP ran."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    model, x, y = _accumulation_case()
    ddp = DistributedDataParallel(model)
    reductions = []

    def counted(state, bucket):
        reductions.append(bucket.index())
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counted)
    starts = [6 * b + 3 * rank for b in range(4)]
    _accumulated_steps(ddp, [(x[s : s + 3], y[s : s + 3]) for s in starts], accumulate=2)
    return {"parameters": [p.detach() for p in model.parameters()], "reductions": reductions}


def _task_metrics(rank: int, world: int) -> dict:
    """Each task's metrics over this rank's share (every world-th sample) of fixed outputs
    and targets, reduced across the ranks as evaluation does."""
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(90, 7, generator=gen), torch.randint(0, 7, (90,), generator=gen)
    predicted, values = torch.randn(90, 2, generator=gen), torch.randn(90, 2, generator=gen)
    own = Classification()  # with metrics of one's own: a class and a function
    own.added_metrics = {
        "auroc": {"_target_": "torchmetrics.AUROC"},
        "brier": {"_target_": "tests.apps.structured.brier"},
    }
    cases = {
        "classification": (Classification(), logits, labels),
        "regression": (Regression(), predicted, values),
        "own metrics": (own, logits, labels),
    }
    return {
        name: evaluate(
            torch.nn.Identity(),
            [(x[rank::world], y[rank::world])],
            device=torch.device("cpu"),
            task=task,
            num_outputs=x.shape[1],
        )
        for name, (task, x, y) in cases.items()
    }


@pytest.fixture(scope="module")
def two_gloo_ranks(tmp_path_factory) -> Path:
    """The folder where two real gloo ranks (_rank_sees) wrote what they saw."""
    folder = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(
        _rank_sees, args=(str(folder / "init"), str(folder)), nprocs=2, join=True
    )
    return folder


def test_rank_zero_decides_and_every_rank_follows(two_gloo_ranks):
    tmp_path = two_gloo_ranks
    decided = ["early stop", "pruned: pruned at step 2", 3.0]
    refused = "ranks [1] were given a different configuration from rank 0"
    rank0, rank1 = (ast.literal_eval((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1))
    assert (rank0[0], rank0[1][:4]) == ([0, 1], [*decided, refused])
    # Rank 1 ran no callback, yet stopped and was pruned with rank 0.
    assert (rank1[0], rank1[1][:4]) == ([], [*decided, refused])
    # Metrics reduced across the ranks: those of one process over all the samples, and
    # scikit-learn's.
    single = _task_metrics(0, world=1)
    for metrics in (rank0[1][4], rank1[1][4]):
        for task, values in single.items():
            assert metrics[task] == pytest.approx(values, rel=1e-6), task
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(90, 7, generator=gen), torch.randint(0, 7, (90,), generator=gen)
    predicted, truth = logits.argmax(1), labels.numpy()
    probabilities = logits.softmax(1).numpy()
    reference = {
        "acc": accuracy_score(truth, predicted),
        "f1": f1_score(truth, predicted, average="macro"),
        "auroc": roc_auc_score(truth, probabilities, multi_class="ovr"),
        "brier": ((probabilities - np.eye(7)[truth]) ** 2).sum(1).mean(),
    }
    for name, value in reference.items():
        assert rank0[1][4]["own metrics"][name] == pytest.approx(value, rel=1e-5), name


def test_accumulating_ranks_reduce_gradients_once_a_step_and_step_as_one_process(
    two_gloo_ranks,
):
    """trainer.accumulate_grad_batches under DDP: the accumulating backwards run in
    no_sync (one gradient all-reduce an optimizer step, not one a batch), and two ranks
    end with the parameters of one process stepping on the same samples at once, 12 then
    11: their shares of the last step differ (6 and 5), yet every sample weighs alike and
    the ranks step together (float64, to 1e-12)."""
    model, x, y = _accumulation_case()
    _accumulated_steps(model, [(x[:12], y[:12]), (x[12:], y[12:])], accumulate=1)
    for rank in (0, 1):
        seen = torch.load(two_gloo_ranks / f"accumulated{rank}.pt")
        assert seen["reductions"] == [0, 0]  # one bucket, reduced at each of 2 steps
        for ranked, single in zip(seen["parameters"], model.parameters(), strict=True):
            torch.testing.assert_close(ranked, single.detach(), rtol=0, atol=1e-12)


def _metric_history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _only_run(uri: str):
    runs = all_runs(uri)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(args: list[str], workdir: Path) -> list[str]:
    """Two torchrun commands, as on two machines, meeting at a c10d rendezvous on
    127.0.0.1, one rank each; their outputs."""
    node = torchrun(
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
        "--rdzv-id=two-nodes",
    )
    logs = [workdir / f"node{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("w") as stream:
            procs.append(start_cli(args, workdir, stdout=stream, program=node))
    codes = [p.wait(timeout=240) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    return texts


REGRESSION = [
    "task=regression",
    "dataset=synthetic_regression",
    "dataset.source.num_train=400",
    "dataset.source.num_test=100",
    "model=mlp",
    "model.hidden_sizes=[32]",
]


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_two_nodes_train_as_one_process_does_and_log_once(tmp_path):
    """Same global batch, same (seed, epoch) order: 2 gloo ranks on two "nodes" reproduce
    the single process (a regression; a classification's metrics across ranks: above).
    Tolerance 1e-4: the only differences are float32 summation order (gradients averaged
    across ranks, metric sums reduced across ranks), ~1e-7 per step."""
    metric, test_metric = "val/r2", "test/r2"
    args = [*REGRESSION, "trainer.epochs=3", "dataset.batch_size=40", *EXACT]
    results = {}
    for name in ("single", "ranks"):
        workdir = tmp_path / name
        workdir.mkdir()
        tracking = tracking_overrides(workdir)
        if name == "single":
            proc = run_cli([*args, *tracking], workdir)
            assert proc.returncode == 0, output(proc)
        else:
            texts = _two_nodes([*args, *tracking], workdir)
        uri = sqlite_uri(workdir)
        run = _only_run(uri)  # one MLflow run, whatever the number of ranks
        assert run.info.status == "FINISHED"
        client = MlflowClient(uri)
        results[name] = {
            key: _metric_history(client, run.info.run_id, key) for key in (metric, "val/loss")
        }
        results[name][test_metric] = run.data.metrics[test_metric]
        results[name]["tags"] = run.data.tags
    # Rank 0 alone speaks: one start line, naming the layout and the batch split.
    assert sum("world size 2 (1 ranks per node)" in text for text in texts) == 1
    assert sum("global batch 40 = 20 per rank" in text for text in texts) == 1
    tags = results["ranks"]["tags"]
    assert tags["distributed.world_size"] == "2" and tags["distributed.backend"] == "gloo"
    assert tags["distributed.ranks_per_node"] == "1"
    assert "distributed.world_size" not in results["single"]["tags"]
    for key in (metric, "val/loss", test_metric):
        assert results["ranks"][key] == pytest.approx(results["single"][key], abs=1e-4), key
    assert len(results["ranks"][metric]) == 3


def _rank_pid(torchrun_pid: int, rank: int, timeout: float = 60) -> int:
    """The pid of torchrun's worker with RANK=`rank` (its children carry it in their env)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                env = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if parent == torchrun_pid and f"RANK={rank}".encode() in env:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} under torchrun {torchrun_pid}")


def _kill_rank_after_an_epoch(tmp_path, restarts: int):
    tracking = tracking_overrides(tmp_path)
    program = torchrun("--standalone", "--nproc_per_node=2", f"--max-restarts={restarts}")
    args = ["trainer.epochs=12", "trainer.dist_timeout=30", *tracking]
    proc = start_cli(args, tmp_path, program=program)
    wait_for_line(proc, "epoch 2/12")  # last.pt of epoch 2 is on disk
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    start = time.time()
    rest, _ = proc.communicate(timeout=240)
    return proc.returncode, rest, time.time() - start, sqlite_uri(tmp_path)


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_a_killed_rank_with_restarts_resumes_in_the_same_mlflow_run(tmp_path):
    code, text, _, uri = _kill_rank_after_an_epoch(tmp_path, restarts=1)
    assert code == 0, text
    assert "torchrun restarted the ranks: resuming" in text
    run = _only_run(uri)  # the restarted group went on in the same run
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "val/acc")]
    assert sorted(steps) == list(range(12))  # every epoch once, none lost or doubled


def test_a_killed_rank_without_restarts_stops_the_others(tmp_path):
    code, text, seconds, uri = _kill_rank_after_an_epoch(tmp_path, restarts=0)
    assert code != 0
    assert seconds < 30  # within trainer.dist_timeout: nothing hangs
    assert "rank: 1" in text and "SIGKILL" in text  # torchrun names the lost rank
    run = _only_run(uri)
    assert run.info.status in ("KILLED", "FAILED")
    checkpoints = list(tmp_path.glob("outputs/*/*/checkpoints/last.pt"))
    assert len(checkpoints) == 1 and load_checkpoint(checkpoints[0])["epoch"] >= 1


def test_a_bad_override_stops_every_rank_with_one_clear_line(tmp_path):
    tracking = tracking_overrides(tmp_path)
    proc = run_cli([*FAST, "dataset.batch_size=33", *tracking], tmp_path, program=TWO_RANKS)
    text = output(proc)
    assert proc.returncode != 0
    message = "Invalid value for 'dataset.batch_size': 33. Allowed: a multiple of the world size 2"
    assert text.count(message) == 2, text  # every rank says the same
    assert "Traceback" not in text.split("ConfigValueError")[0]
    assert all(r.info.status != "RUNNING" for r in all_runs(sqlite_uri(tmp_path)))


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_a_sweep_runs_each_trial_on_two_ranks_with_the_trials_parameters(tmp_path):
    """Stopped by SIGTERM while its first trial's group trains, then finished by the same
    command: every trial on two ranks, with its own parameters."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = [*tracking_overrides(tmp_path), "tracking.log_plots=false"]
    args = sweep_args(
        storage,
        tracking,
        "hydra.sweeper.devices_per_trial=2",
        "trainer.epochs=3",
        "hydra.sweeper.pruner=none",
        # A secret each rank resolves (the trial fails if not) and no file of it holds.
        "+hydra.job.env_set.WAREHOUSE=postgresql://reader:r4nk-S3cret@db.example/w",
        n_trials=1,
        study="ranks",
    )
    client = MlflowClient(sqlite_uri(tmp_path))
    proc = start_cli(args, tmp_path)
    try:
        running_trial_run(client, 1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        stop_group(proc)
    assert proc.returncode == 143 and "Traceback" not in out, out[-4000:]
    assert (
        out.strip()
        .splitlines()[-1]
        .endswith("the same command continues the study, retrying the 1 trial cut short once.")
    )
    assert {r.info.status for r in all_runs(sqlite_uri(tmp_path))} == {"KILLED"}

    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, output(proc)
    study = optuna.load_study(study_name="ranks", storage=storage)
    groups = sorted(tmp_path.glob("multirun/*/*/.trial_groups/*.log"))
    why = (
        [t.system_attrs.get("fail_reason") for t in study.trials],
        [log.read_text()[-3000:] for log in groups],
    )
    counted = [t for t in study.trials if t.state != TrialState.FAIL]
    assert [t.state for t in counted] == [TrialState.COMPLETE], why  # the stopped one's retry
    runs = {r.data.tags.get("optuna.trial"): r for r in all_runs(sqlite_uri(tmp_path))}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert not files_holding(tmp_path, "r4nk-S3cret")  # the groups' payloads included
    for trial in counted:
        run = runs[str(trial.number)]
        assert run.data.tags["distributed.world_size"] == "2"
        # Each rank's config fingerprint, gathered at start: both ranks trained one config,
        # the one whose parameters the trial holds.
        fingerprints = run.data.tags["distributed.rank_fingerprints"].split(",")
        assert len(fingerprints) == 2 and len(set(fingerprints)) == 1
        # A retry continues in the folder of the trial it retries.
        checkpoint = Path(trial.user_attrs["checkpoint_dir"]) / "best.pt"
        assert load_checkpoint(checkpoint)["extra"]["fingerprint"] == fingerprints[0]
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value)


@pytest.mark.gpu
def test_ddp_on_gpus_with_nccl(tmp_path):
    gpus = min(2, torch.cuda.device_count())
    tracking = tracking_overrides(tmp_path)
    program = torchrun("--standalone", f"--nproc_per_node={gpus}")
    proc = run_cli([*FAST, "model.batch_norm=true", *tracking], tmp_path, program=program)
    assert proc.returncode == 0, output(proc)
    run = _only_run(sqlite_uri(tmp_path))
    assert run.data.tags["distributed.backend"] == "nccl"
    assert run.data.tags["distributed.world_size"] == str(gpus)
    assert run.data.tags["device"].startswith("cuda")
