"""torchrun / torch.distributed: the process group a command runs in, and the few collectives momil uses.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m momil <stage> ...`` starts N processes
per node with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` in their environment;
:func:`init_from_env` (called by the CLI for the stages that run distributed: ``pretrain``, ``extract``, ``train``)
joins them into one process group: gloo on CPU, NCCL on CUDA (each rank on GPU ``LOCAL_RANK``). Without those
variables, or with a world of one, every helper here is a no-op and the command runs as one process, exactly as
before. Assumed: a filesystem shared by every rank (the output folder); logs, progress bars and every write on
rank 0 only; a failure on any rank ends the run (torchrun stops the other ranks).

The collectives are torch.distributed's; this module only holds the context (rank, world, device), the threads
per rank, and object/array helpers that keep the callers free of ``if distributed`` branches.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import numpy as np
import torch

from momil.errors import MomilError

#: the stages whose work is split across torchrun's ranks; any other stage under torchrun is refused
DISTRIBUTED_STAGES = ("pretrain", "extract", "train", "cv")


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT = Context()


def context() -> Context:
    """The current process's context (one process, rank 0 of 1, unless :func:`init_from_env` joined a group)."""
    return _CONTEXT


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def threads_per_rank(local_world: int) -> int:
    """Torch threads of each rank: ``MOMIL_THREADS`` when set, else the node's cores shared evenly between its
    ranks (torchrun itself sets ``OMP_NUM_THREADS=1``, which leaves cores idle when ranks are fewer than cores)."""
    asked = os.environ.get("MOMIL_THREADS")
    if asked:
        try:
            value = int(asked)
        except ValueError:
            raise MomilError(f"MOMIL_THREADS={asked!r} is not a whole number -- set the threads per rank") from None
        if value < 1:
            raise MomilError(f"MOMIL_THREADS={value} -- set it to at least 1")
        return value
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world))


def init_from_env(stage: str, device_name: str = "auto") -> Context:
    """Join the process group torchrun describes in the environment (a no-op for one process); returns the
    context. ``device_name`` is the stage's ``--device``: NCCL when it resolves to CUDA, gloo otherwise."""
    global _CONTEXT
    if not launched_by_torchrun():
        return _CONTEXT
    if stage not in DISTRIBUTED_STAGES:
        raise MomilError(
            f"momil {stage} does not run under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); the stages that do "
            f"are {', '.join(DISTRIBUTED_STAGES)} -- run it as one process (select and benchmark spread their fits "
            "with --executor processes or ray)"
        )
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(threads_per_rank(local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    _CONTEXT = Context(rank, world, local_rank, local_world)
    return _CONTEXT


def shutdown() -> None:
    """Leave the process group (after the stage has finished on every rank)."""
    global _CONTEXT
    if _CONTEXT.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CONTEXT = Context()


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for CUDA under torchrun, ``device`` otherwise."""
    if device.type == "cuda" and _CONTEXT.active:
        return torch.device("cuda", _CONTEXT.local_rank)
    return device


def barrier() -> None:
    if _CONTEXT.active:
        import torch.distributed as dist

        dist.barrier()


def all_gather_object(value) -> list:
    """Every rank's ``value``, in rank order (``[value]`` for one process)."""
    if not _CONTEXT.active:
        return [value]
    import torch.distributed as dist

    out = [None] * _CONTEXT.world
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value, src: int = 0):
    """Rank ``src``'s ``value`` on every rank."""
    if not _CONTEXT.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place over the ranks (``"sum"``, ``"max"``, ``"min"`` or ``"mean"``); returns it."""
    if not _CONTEXT.active:
        return tensor
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}
    dist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor /= _CONTEXT.world
    return tensor


def sum_gradients(params: list, extra: list | tuple = ()) -> list:
    """Sum the gradients of ``params`` over the ranks in one all-reduce (a parameter no rank has a gradient for
    keeps none, as in one process), with the tensors of ``extra`` summed in the same call; returns the summed
    ``extra``. Written by hand rather than with ``DistributedDataParallel``: momil's models are called through
    other methods than ``forward`` (planned pairs, DINO's token paths), which DDP's hooks do not see, and a
    step's head rows differ between ranks."""
    if not _CONTEXT.active:
        return list(extra)
    device = params[0].device if params else (extra[0].device if extra else torch.device("cpu"))
    zeros = torch.zeros
    parts = [p.grad.reshape(-1).float() if p.grad is not None else zeros(p.numel(), device=device) for p in params]
    parts.append(torch.tensor([float(p.grad is not None) for p in params], device=device))
    parts += [t.reshape(-1).float() for t in extra]
    flat = all_reduce_(torch.cat(parts))
    sizes = [p.numel() for p in params]
    offset = sum(sizes)
    had = (flat[offset : offset + len(params)] > 0).tolist()
    start = 0
    for p, size, keep in zip(params, sizes, had):
        p.grad = flat[start : start + size].view_as(p).to(p.dtype).clone() if keep else None
        start += size
    offset += len(params)
    out = []
    for t in extra:
        out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out


def shard(items, rank: int | None = None, world: int | None = None):
    """This rank's share of ``items``: every ``world``-th item from position ``rank`` (all of them for one
    process)."""
    rank = _CONTEXT.rank if rank is None else rank
    world = _CONTEXT.world if world is None else world
    return items[rank::world]


def gather_rows(parts: np.ndarray, total: int) -> np.ndarray:
    """Undo :func:`shard` for arrays: each rank's rows of a sharded sequence of ``total`` items, put back in the
    order of the sequence on every rank."""
    pieces = all_gather_object(parts)
    if len(pieces) == 1:
        return pieces[0]
    out = np.empty((total, *pieces[0].shape[1:]), dtype=pieces[0].dtype)
    for rank, piece in enumerate(pieces):
        out[rank :: len(pieces)] = piece
    return out
