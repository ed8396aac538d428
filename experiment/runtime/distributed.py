"""One run on several processes: `torch.distributed` as `torchrun` sets it up.

torchrun starts one process per device and tells each its place through environment
variables (RANK, WORLD_SIZE, LOCAL_RANK, ...). `start` joins the process group (NCCL on
CUDA, gloo on CPU); the helpers here are the few collectives a run needs: sums once per
epoch, rank 0's decisions and objects handed to every rank, rank 0's weights copied to
all. Without torchrun they do nothing, so the single-process path stays as it was.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from experiment.errors import ConfigValueError, DistributedError
from experiment.runtime.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    backend: str | None = None  # None: no process group (a plain single-process run)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def tags(self, fingerprints: Sequence[str] = ()) -> dict[str, str]:
        """MLflow tags of a distributed run: its layout and each rank's config fingerprint."""
        if not self.distributed:
            return {}
        return {
            "distributed.world_size": str(self.world_size),
            "distributed.ranks_per_node": str(self.local_world_size),
            "distributed.backend": self.backend,
            "distributed.rank_fingerprints": ",".join(fingerprints),
        }


SINGLE = Ranks()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def restarted() -> bool:
    """True in a group torchrun brought back after one of its ranks died (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def start(device_option: str, timeout_s: float) -> tuple[Ranks, torch.device | None]:
    """Join torchrun's process group (if this process was started by torchrun) and pick
    this rank's device: GPU LOCAL_RANK with NCCL, or the CPU with gloo."""
    if not launched_by_torchrun():
        return SINGLE, None
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_option)  # the single run's rule, and its message
    use_cuda = device.type == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local_rank} has no GPU: this machine shows "
                f"{torch.cuda.device_count()}. Start torchrun with --nproc_per_node at most that."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(
            backend, timeout=timeout, device_id=device if use_cuda else None, **_meeting(timeout)
        )
    except Exception as err:  # a rendezvous that never completes, an unreachable peer
        raise DistributedError(
            f"could not join the process group ({backend}, world size "
            f"{os.environ['WORLD_SIZE']}): {err}"
        ) from err
    ranks = Ranks(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        backend=backend,
    )
    return ranks, device


def _meeting(timeout: datetime.timedelta) -> dict:
    """Where the ranks meet: torch's env:// defaults, except under torchrun's agent store.
    That store lives as long as the agent, across restarts, and the addresses a killed
    group left in it would send a restarted group's ranks to dead peers (a race that fails
    the restart): each attempt gets keys of its own."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    agent_store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {
        "store": dist.PrefixStore(f"experiment/attempt_{attempt}", agent_store),
        "rank": int(os.environ["RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
    }


@contextlib.contextmanager
def joined(trainer, batch_size: int):
    """The run's place among torchrun's ranks (`trainer`: the trainer config node), and
    its device (None outside torchrun: the run picks it), for the duration of the run."""
    ranks, device = start(trainer.device, trainer.dist_timeout)
    try:
        if ranks.distributed:
            per_rank = per_rank_batch(batch_size, ranks.world_size)
            if not ranks.main:  # one voice: rank 0's; other ranks report only problems
                logging.getLogger().setLevel(logging.WARNING)
            log.info(
                "Distributed: world size %s (%s ranks per node), backend %s, "
                "global batch %s = %s per rank",
                ranks.world_size,
                ranks.local_world_size,
                ranks.backend,
                batch_size,
                per_rank,
            )
        yield ranks, device
    except RuntimeError as err:
        if ranks.distributed and _peer_lost(err):
            raise lost_ranks("training", err) from err
        raise
    finally:
        stop()


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """`dataset.batch_size` is the global batch, so a configuration trains the same on any
    number of ranks: each takes an equal share."""
    if batch_size % world_size:
        raise ConfigValueError(
            "dataset.batch_size",
            batch_size,
            f"a multiple of the world size {world_size} (it is the global batch, split "
            f"equally between the ranks), e.g. {max(1, batch_size // world_size) * world_size}",
        )
    return batch_size // world_size


def same_config_on_all_ranks(fingerprint: str) -> list[str]:
    """Every rank's config fingerprint; a DistributedError if any rank would train another
    configuration (different overrides per rank would silently train a mix)."""
    fingerprints = gather_objects(fingerprint)
    differing = [rank for rank, f in enumerate(fingerprints) if f != fingerprints[0]]
    if differing:
        raise DistributedError(
            f"ranks {differing} were given a different configuration from rank 0: start "
            "every rank with the same overrides (and the same config files)."
        )
    return fingerprints


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective(what: str, operation: Callable[[], object]):
    """Run a collective; a peer that died or hung becomes one clear DistributedError."""
    try:
        return operation()
    except RuntimeError as err:  # dist.DistError and gloo's errors are RuntimeErrors
        raise lost_ranks(what, err) from err


def lost_ranks(what: str, err: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {dist.get_rank()} lost the other ranks while {what} (a rank died or stalled "
        f"past trainer.dist_timeout): {str(err).splitlines()[0][:300]}. Checkpoints written "
        "so far are kept; rerun with trainer.resume=auto (torchrun --max-restarts does it)."
    )


def _peer_lost(err: BaseException) -> bool:
    """An error raised inside a collective of DDP's own (gradient all-reduce) because a peer
    is gone: what torch raises for it carries the backend's name or type."""
    text = str(err)
    return isinstance(err, dist.DistError) or "gloo" in text or "NCCL" in text


def reduced(what: str, operation: Callable[[], object]):
    """`operation()`, which reduces across the ranks through another library (the epoch
    metrics' sync in torchmetrics): a peer lost on the way becomes one clear
    DistributedError; any other error stays what it is."""
    try:
        return operation()
    except RuntimeError as err:
        if _active() and _peer_lost(err):
            raise lost_ranks(what, err) from err
        raise


def from_main(obj):
    """Rank 0's `obj`, on every rank (pickled; for small objects and decisions)."""
    if not _active():
        return obj
    holder = [obj]
    _collective("sharing rank 0's state", lambda: dist.broadcast_object_list(holder, src=0))
    return holder[0]


def gather_objects(obj) -> list:
    """`obj` from every rank, in rank order."""
    if not _active():
        return [obj]
    gathered = [None] * dist.get_world_size()
    _collective("comparing configurations", lambda: dist.all_gather_object(gathered, obj))
    return gathered


def copy_weights_from_main(model: nn.Module) -> None:
    """Make every rank's weights and buffers rank 0's."""
    if not _active():
        return
    for tensor in model.state_dict().values():
        _collective("sharing rank 0's weights", lambda t=tensor: dist.broadcast(t, src=0))


class OnMainRank:
    """Runs the epoch callbacks on rank 0 alone (checkpoints, MLflow, progress, the trial's
    pruning report), then gives every rank rank 0's outcome: the stop reason, or the error
    a callback raised (a prune decision, a failing tracking store), raised on every rank.
    So all ranks stop together and none waits forever in the next epoch's collectives."""

    def __init__(self, callbacks: Sequence[Callable], ranks: Ranks):
        self.callbacks, self.ranks = list(callbacks), ranks

    def __call__(self, state) -> None:
        error = None
        if self.ranks.main:
            try:
                for callback in self.callbacks:
                    callback(state)
            except Exception as err:  # handed to every rank below
                error = err
        state.stop_reason, error = from_main((state.stop_reason, _portable(error)))
        if error is not None:
            raise error


def _portable(error: BaseException | None) -> BaseException | None:
    """The error itself if it can be pickled to the other ranks, else a stand-in naming it."""
    if error is None:
        return None
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return DistributedError(f"rank 0 stopped: {type(error).__name__}: {error}")
