"""(c) Data parallel: 2 Gloo processes on the CPU keep identical replicas and match one process
with the same global batch (each rank takes a shard; gradients are averaged)."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from invdiff.prior.data import Normalisation, SliceStack, build_sets
from invdiff.prior.store import RAW_NAME, load_weights
from invdiff.prior.train import TrainSettings, train
from invdiff.prior.unet import UNetConfig


def settings(energy: bool = False) -> TrainSettings:
    from invdiff.prior.augment import AugmentConfig

    return TrainSettings(image_size=16, unet=UNetConfig(base_channels=8, channel_mults=(1, 2)), batch_size=4, steps=4,
                         checkpoint_every=2, log_every=2, lr=1e-3, lr_warmup=1, energy=energy,
                         augment=AugmentConfig(p_noise=0.5, p_blur=0.5))


def data():
    rng = np.random.default_rng(0)
    norm = Normalisation()
    train_set, _ = build_sets([SliceStack(rng.random((8, 20, 20)).astype(np.float32), "a.npy")], 16, 1, "crop", norm, 0.0)
    return train_set, norm


def _worker(rank: int, world: int, ports: list[int], out: str, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train_set, norm = data()
    for energy, port in zip((False, True), ports):
        os.environ["MASTER_PORT"] = str(port)
        summary = train(settings(energy), train_set, f"{out}/energy{int(energy)}", norm=norm, data_summary={})
        results[(rank, energy)] = summary["weights_digest"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path):
    """Plain DDP (energy off) and the explicit all-reduce path (energy on), in one spawn."""
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, [_free_port(), _free_port()], str(tmp_path / "ddp"), results), nprocs=2, join=True)
    train_set, norm = data()
    for energy in (False, True):
        assert results[(0, energy)] == results[(1, energy)]  # replicas bitwise identical
        single = tmp_path / f"single{int(energy)}"
        train(settings(energy), train_set, single, norm=norm, data_summary={})
        a = load_weights(single / RAW_NAME)
        b = load_weights(tmp_path / "ddp" / f"energy{int(energy)}" / RAW_NAME)
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-5, (energy, worst)
        init = settings(energy)
        torch.manual_seed(init.seed)
        from invdiff.prior.train import build_model

        start = build_model(init).state_dict()
        assert any(not torch.equal(start[k], a[k]) for k in a)  # training moved the weights


def _diverging_worker(rank: int, world: int, port: int, out: str, results) -> None:
    """Rank 1's training loss turns NaN at step 3 (of 4; checks at steps 2 and 4); rank 0's stays
    finite until the averaged NaN gradients reach its weights."""
    import invdiff.prior.train as train_module
    from invdiff.errors import InputError

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    real, calls = train_module.make_loss, [0]

    def make_loss(kind, noise):
        loss = real(kind, noise)
        compute = loss.compute

        def nan_on_rank_1(*args, **kwargs):
            value = compute(*args, **kwargs)
            if torch.is_grad_enabled():
                calls[0] += 1
                if rank == 1 and calls[0] == 3:
                    return value * float("nan")
            return value

        loss.compute = nan_on_rank_1
        return loss

    train_module.make_loss = make_loss
    train_set, norm = data()
    try:
        train(settings(), train_set, out, norm=norm, data_summary={})
        results[rank] = "finished"
    except InputError as exc:
        results[rank] = str(exc)


def test_ddp_divergence_stops_every_rank_at_the_same_step(tmp_path):
    """A NaN loss on one rank stops all of them with the same sentence (the first bad step over
    all ranks), and the last good checkpoint (step 2) stays."""
    from invdiff.prior.store import load_prior

    manager = mp.Manager()
    results = manager.dict()
    out = tmp_path / "ddp"
    mp.spawn(_diverging_worker, args=(2, _free_port(), str(out), results), nprocs=2, join=True)
    message = "training diverged at step 3 (loss is NaN); lower --lr or check the data."
    assert dict(results) == {0: message, 1: message}
    assert load_prior(out).config["training"]["steps_done"] == 2
