"""Running fit() as one plain process, or as one rank of a torchrun job.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with them, each rank joins the process group
(NCCL on CUDA, gloo on the CPU), trains on its share of every epoch, sums its loss and
accuracy counts with the others, and only rank 0 writes files.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as td

from ..params import Params
from .fit import Paths, fit
from .loop import Dist


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
    from ..errors import CifarlabError

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           script, *argv]
    print(f"train: {nproc} processes under torchrun: {' '.join(cmd[1:])}", flush=True)
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise CifarlabError(f"torchrun with {nproc} processes failed (exit {res.returncode}); see the ranks' output above")
    return True


def run_fit(params: Params, paths: Paths, log=print) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return fit(params, paths, log=log)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and params.train.device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        params = params.model_copy(update={"train": params.train.model_copy(update={"device": f"cuda:{local}"})})
    td.init_process_group("nccl" if use_cuda else "gloo")
    try:
        quiet = (lambda *a, **k: None) if rank else log
        return fit(params, paths, Dist(rank=rank, world=world, reduce=_sum), log=quiet)
    finally:
        td.destroy_process_group()
