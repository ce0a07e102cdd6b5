"""Two gloo processes on CPU compute the same contrastive loss and gradient as one process."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from medmap.losses.contrastive import modality_contrastive_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g)                 # "volume features" before projection
    t = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    mod = torch.tensor([0, 1, 0, 1, 1, 0, 2, 2])
    proj = torch.nn.Linear(6, 4)
    torch.nn.init.normal_(proj.weight, generator=g)
    torch.nn.init.zeros_(proj.bias)
    return x, t, mod, proj


def _loss(proj, x, t, mod):
    v = F.normalize(proj(x), dim=-1)
    return modality_contrastive_loss(v, t, mod, torch.tensor(5.0))["contrastive_loss"]


SPLITS = (4, 5)        # rank 0's rows of the global batch of 8: halves, and 5 against 3


def _worker(rank: int, world: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for split in SPLITS:                            # one process group for both splits
            x, t, mod, proj = _problem()
            ddp = torch.nn.parallel.DistributedDataParallel(proj)
            sl = slice(0, split) if rank == 0 else slice(split, 8)   # this rank's rows
            loss = _loss(ddp, x[sl], t[sl], mod[sl])
            loss.backward()                             # DDP averages gradients over ranks
            out[rank, split] = (loss.item(), proj.weight.grad.clone())
    finally:
        dist.destroy_process_group()


def test_two_process_loss_and_gradient_equal_single_process():
    """Half the global batch on each rank, and 5 rows against 3 (a grouped sampler's last
    batch of a modality: ranks gather different numbers of rows; gloo aborted on it)."""
    x, t, mod, proj = _problem()
    ref = _loss(proj, x, t, mod)
    ref.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        for split in SPLITS:
            loss, grad = results[rank, split]
            assert abs(loss - ref.item()) < 1e-5, (rank, split)
            assert torch.allclose(grad, proj.weight.grad, atol=1e-5), (rank, split)
