"""Training as one plain process, or as one rank of a torchrun job.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with them, each rank joins the process group
(NCCL on CUDA, gloo on the CPU), trains on its share of every epoch, sums its loss and
accuracy counts with the others, and only rank 0 writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as td

from cifarlab.engine.loop import Dist
from cifarlab.errors import CifarlabError
from cifarlab.params import Params


def _sum(t: torch.Tensor) -> torch.Tensor:
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def relaunch_under_torchrun(nproc: int, script: str, argv: list[str]) -> bool:
    """With train.nproc > 1 and no torchrun around us yet, run this script under torchrun.

    Returns True when it did (the caller then has nothing left to do). Under a torchrun that
    the user started (several nodes, a rendezvous endpoint), WORLD_SIZE is already set and
    this process is one rank: nothing to relaunch.
    """
    if nproc <= 1 or "WORLD_SIZE" in os.environ:
        return False
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", script, *argv]
    print(f"train: {nproc} processes under torchrun: {' '.join(cmd[1:])}", flush=True)
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise CifarlabError(
            f"torchrun with {nproc} processes failed (exit {res.returncode}); see the ranks' output above"
        )
    return True


@contextmanager
def process_group(params: Params, log=print) -> Iterator[tuple[Params, Dist, Callable]]:
    """Join torchrun's process group when this process is one of its ranks.

    Yields the params (with this rank's CUDA device where it uses one), the `Dist` that
    reduces across ranks and the log function (silent on ranks other than 0). A plain
    process yields the params unchanged, a one-process `Dist` and `log`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield params, Dist(), log
        return
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and params.train.device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        params = params.model_copy(update={"train": params.train.model_copy(update={"device": f"cuda:{local}"})})
    td.init_process_group("nccl" if use_cuda else "gloo")
    try:
        quiet = (lambda *a, **k: None) if rank else log
        yield params, Dist(rank=rank, world=world, reduce=_sum), quiet
    finally:
        td.destroy_process_group()
