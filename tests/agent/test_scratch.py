"""The pool of CPU buffers for kept per-sample gradients (agent/engine/scratch.py)."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from glasscockpit.agent import always
from glasscockpit.agent.engine import scratch as scratch_module
from glasscockpit.agent.engine.scratch import Scratch
from glasscockpit.agent.instruments import BY_NAME
from tests.agent.harness import train_steps
from tests.agent.test_instruments import assert_reading


class _Holder:
    """A lender: anything a weak reference can point at."""


def test_buffers_come_back_when_their_holder_is_collected() -> None:
    pool, like = Scratch(), torch.zeros(1)
    first = _Holder()
    with pool.lending(first):
        a = pool.empty((4, 3), like)
        b = pool.empty((4, 3), like)
    assert a.data_ptr() != b.data_ptr()  # lent at once: never the same buffer
    second = _Holder()
    with pool.lending(second):
        c = pool.empty((4, 3), like)
    assert c.data_ptr() not in (a.data_ptr(), b.data_ptr())  # first still holds
    ptrs = {a.data_ptr(), b.data_ptr()}
    del first, a, b
    gc.collect()
    with pool.lending(_Holder()):
        d = pool.empty((4, 3), like)
        e = pool.empty((2, 6), like)  # another shape: a new buffer
    assert d.data_ptr() in ptrs
    assert e.data_ptr() not in ptrs
    # Outside ``lending`` nothing is pooled or lent.
    assert pool.empty((4, 3), like).data_ptr() != c.data_ptr()


class _Twice(nn.Module):
    """A sequence model whose middle layer runs twice (per-sample sums of calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.mid, self.head = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mid(torch.tanh(self.a(x))))
        return self.head(torch.tanh(self.mid(h)).mean(1))


@pytest.mark.parametrize("limit", [0, scratch_module.LIMIT], ids=["off", "pooled"])
def test_pooled_buffers_give_the_unpooled_readings_at_every_step(
    limit: int, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each tracked step refills last step's buffers: a stale or shared buffer
    # would change the readings of later steps.
    names = ["norm_test", "inner_test", "mean_gsnr", "grad_hist_1d", "alpha"]

    def run() -> dict:
        torch.manual_seed(0)
        model = _Twice()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        insts = [BY_NAME[n](schedule=always) for n in names]

        def batch(_: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.randn(6, 4, 5), torch.randint(0, 3, (6,))

        return train_steps(model, opt, insts, batch, 4).readings

    monkeypatch.setattr(scratch_module, "LIMIT", 0)
    want = run()
    monkeypatch.setattr(scratch_module, "LIMIT", limit)
    scratch_module.SCRATCH.clear()
    got = run()
    for step in range(3):
        for name in names:
            assert_reading(got[step][name], want[step][name], f"{step} {name}", 0.0)
