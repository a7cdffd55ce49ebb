"""Multi-process DDP, the opt-in per-rank view: each process's own batch (gloo, CPU).

With ``Cockpit(..., per_rank=True)`` every process streams its own run. With several
processes ``.grad`` is the all-reduced mean while the per-sample
gradients are the process's own; the statistics must describe that process's
batch (its per-sample gradients and their mean), tested against per-sample
loops in each process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.conftest import free_port

NAMES = ["grad_norm", "norm_test", "inner_test", "mean_gsnr", "grad_hist_1d"]
WORLD = 2


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    from glasscockpit.agent import Cockpit, always
    from glasscockpit.agent.instruments import BY_NAME
    from tests.agent.reference import REFERENCES, Data
    from tests.agent.test_instruments import assert_reading

    store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        model = nn.parallel.DistributedDataParallel(module)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(1 + rank)  # each process its own batch
        x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
        # Per-sample gradients of this process's batch at the step's parameters.
        params = dict(module.named_parameters())
        rows = [
            torch.autograd.grad(
                nn.functional.cross_entropy(module(x[i : i + 1]), y[i : i + 1]),
                list(params.values()),
            )
            for i in range(len(x))
        ]
        insts = [BY_NAME[n](schedule=always) for n in NAMES]
        cockpit = Cockpit(
            model, opt, server=None, instruments=insts, budget=None, per_rank=True
        )
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        with cockpit.step(0, loss=loss):
            loss.backward()
        cockpit.close()
        per = {
            n: torch.stack([r[i] for r in rows]).double() for i, n in enumerate(params)
        }
        data = Data(
            names=list(params),
            theta={n: p.detach().double() for n, p in params.items()},
            per_sample=per,
            grad={n: g.mean(0) for n, g in per.items()},
            hess_diag={},
            loss=float(loss.detach()),
            lrs={},
        )
        norms = {n: float(g.norm()) for n, g in data.grad.items()}
        total = sum(v * v for v in norms.values()) ** 0.5
        failures = []
        for inst in insts:
            if inst.name == "grad_norm":  # of this process's mean gradient
                want = {"total": total, **norms}
            else:
                want = REFERENCES[inst.name](data, inst)
            got = cockpit.readings[0][inst.name]
            try:
                if inst.name == "grad_hist_1d":
                    assert got["counts"].tolist() == want["counts"].tolist()
                else:
                    assert_reading(got, want, inst.name)
            except AssertionError as exc:
                failures.append(f"{inst.name}: {exc}")
        # The optimizer got the all-reduced mean, unlike these readings.
        mean = module[0].bias.grad.clone()
        local = per["0.bias"].mean(0).float()
        dist.all_reduce(local)
        if not torch.allclose(mean, local / WORLD, rtol=1e-5, atol=1e-7):
            failures.append(".grad is not the mean over processes")
        Path(out, f"{rank}.json").write_text(json.dumps([failures, cockpit.run]))
        dist.barrier()  # nobody leaves while the other still talks to the store
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: destroying the store's threads there
    # can abort ("terminate called without an active exception"); the result
    # is on disk already.
    os._exit(0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_each_process_reads_its_own_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        failures, run = json.loads((tmp_path / f"{rank}.json").read_text())
        assert failures == []
        assert run.endswith(f".rank{rank}")
