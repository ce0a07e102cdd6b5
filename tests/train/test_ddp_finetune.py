"""Fine-tuning under DDP: two gloo processes on CPU, each with half the global batch, give the same
loss (averaged over ranks) and the same gradients (DDP's average) as one process on the whole
batch.

This holds because nothing in ``MedMAPClassifier`` mixes samples of a batch (the conv stream's
InstanceNorm, LayerNorm and the fusion Transformer are per sample; dropout is 0 in the tiny
config) and ``medmap_loss`` is a mean over the batch (BCE mean, KL ``batchmean``). Rank 1's
cases both lack T2WI, so that expert and its conv stream are unused there; DDP (with
``find_unused_parameters=True``, as the engine's ``ddp_find_unused_parameters_true``) still
averages its gradient correctly.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medmap.losses.medmap import medmap_loss
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

MODS, CLASSES, S = ["T2WI", "C+A"], ["a", "b", "c"], 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Step(torch.nn.Module):
    """The fine-tuning objective as one module, so DDP sees every parameter in its forward."""

    def __init__(self, model: MedMAPClassifier):
        super().__init__()
        self.model = model

    def forward(self, images, present, label, text):
        out = self.model(images, present)
        return medmap_loss(out["logits"], label, out["fusion"], self.model.text_features(text),
                           epoch=1, max_epochs=3)["loss"]


def _problem():
    cfg = MedMAPConfig.tiny(MODS, CLASSES)
    assert cfg.dropout == 0.0
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MedMAPClassifier(cfg, torch.randn(len(MODS), len(CLASSES), cfg.text_dim, generator=g))
    images = torch.randn(4, len(MODS), 1, S, S, S, generator=g)
    present = torch.tensor([[True, True], [True, False], [False, True], [False, True]])
    images[~present] = 0.0                      # as collate_cases fills missing slots
    label = torch.tensor([0, 1, 2, 1])
    text = torch.randn(4, cfg.text_dim, generator=g)
    return model.train(), images, present, label, text


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, images, present, label, text = _problem()
        step = _Step(model)
        ddp = torch.nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
        sl = slice(rank * 2, rank * 2 + 2)      # this rank's half of the global batch
        loss = ddp(images[sl], present[sl], label[sl], text[sl])
        loss.backward()                         # DDP averages gradients over ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        out[rank] = (mean_loss.item() / world, _grads(model))
    finally:
        dist.destroy_process_group()


@pytest.fixture
def one_thread():
    """One torch thread (as each DDP worker), restored after the test: a leaked setting made
    every later test of the session run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_process_finetune_loss_and_gradients_equal_single_process(one_thread):
    model, images, present, label, text = _problem()
    ref = _Step(model)(images, present, label, text)
    ref.backward()
    ref_grads = _grads(model)
    assert any(g.abs().sum() > 0 for g in ref_grads.values())
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        loss, grads = results[rank]
        assert abs(loss - ref.item()) < 1e-5 * max(1.0, abs(ref.item()))
        assert grads.keys() == ref_grads.keys()
        bad = [n for n in ref_grads
               if not torch.allclose(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6)]
        assert not bad, (f"rank {rank}: gradients differ from one process for {bad[:5]} "
                         f"(max abs diff {max((grads[n] - ref_grads[n]).abs().max().item() for n in bad):.2e})")
