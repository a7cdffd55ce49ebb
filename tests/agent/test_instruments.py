"""Every per-sample and curvature instrument against its brute-force reference."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from glasscockpit.agent import always
from glasscockpit.agent.instruments import BY_NAME
from tests.agent.harness import run_step
from tests.agent.problems import PROBLEMS, Problem, make_id
from tests.agent.reference import REFERENCES, Data, collect

#: float32 statistics against float64 references of float32 per-sample gradients.
RTOL = 1e-4


@functools.cache
def reference_data(problem: Problem) -> Data:
    torch.set_num_threads(1)
    return collect(problem)


def variance_conditioning(data: Data) -> float:
    """``max_j g_j² / var_j``: how much float32 rounding of ``g`` is amplified.

    GSNR and EB divide by ``var_j = mean_n g_nj² − g_j²``; when all samples agree on
    an entry (e.g. the bias of a class absent from the batch) the subtraction
    cancels, and any float32 implementation (Cockpit's too) loses
    ``~2·eps_f32·g_j²/var_j`` relative accuracy there.
    """
    gn = data.flat(data.per_sample, True)
    var = gn.var(0, unbiased=False)
    return float((gn.mean(0) ** 2 / var.clamp(min=1e-300)).max())


def assert_reading(got: Any, want: Any, where: str = "", rtol: float = RTOL) -> None:
    """Scalars to ``rtol``, histogram counts exactly, None where undefined."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert set(got) == set(want), where
        for k in want:
            assert_reading(got[k], want[k], f"{where}[{k}]", rtol)
    elif want is None:
        assert got is None, where
    elif isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        if where.endswith("[counts]"):
            assert torch.equal(got.double(), want.double()), where
        else:
            torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=1e-12)
    else:
        assert got == pytest.approx(want, rel=rtol, abs=1e-12), where


@pytest.mark.parametrize("problem", PROBLEMS, ids=make_id)
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_reference(name: str, problem: Problem, torch_threads: None) -> None:
    inst = BY_NAME[name](schedule=always)
    got = run_step(problem, [inst])[name]
    data = reference_data(problem)
    rtol = RTOL
    if name in ("mean_gsnr", "early_stopping"):
        rtol = max(
            RTOL, 4 * torch.finfo(torch.float32).eps * variance_conditioning(data)
        )
    assert_reading(got, REFERENCES[name](data, inst), name, rtol)
