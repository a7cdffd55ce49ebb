"""The agent on a CUDA device: every ``full`` instrument runs and equals the CPU run.

Run on a GPU machine with ``pytest -m cuda`` (skipped elsewhere).
``GLASSCOCKPIT_CUDA_DEVICE=cpu pytest -m cuda tests/agent/test_cuda.py`` runs the
same comparisons CPU against CPU, a dry run of the test code. The brute-force
reference tests also run with the agent on the GPU:
``GLASSCOCKPIT_TEST_DEVICE=cuda pytest tests/agent/test_instruments.py ...``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import PRESETS
from glasscockpit.protocol import Readings
from tests.agent.models import CAUSAL_LM, CUSTOM, ENCODER, RES_CNN, RES_CNN_TRAIN
from tests.agent.problems import BY_NAME, Problem, make_id
from tests.agent.test_robustness import RNNS

DEVICE = torch.device(os.environ.get("GLASSCOCKPIT_CUDA_DEVICE", "cuda"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA device",
    ),
]

MODELS = (
    BY_NAME["mlp"],
    BY_NAME["cnn"],
    BY_NAME["mse"],
    ENCODER,
    CAUSAL_LM,
    RES_CNN,
    RES_CNN_TRAIN,
    CUSTOM,
    RNNS[0],
)
STEPS = 3
#: float32 on two devices: different kernels and summation orders (~1e-6
#: relative per operation), amplified by the tests' ratios and three steps of
#: training; far below what a wrong formula or a missed parameter would give.
RTOL = 2e-3


@pytest.fixture
def exact_float32() -> Iterator[None]:
    """TF32 off, so the GPU computes float32 like the CPU."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def sample_losses(problem: Problem, out: Tensor, y: Tensor) -> Tensor:
    """Per-sample losses [B] (token means per sequence), as Alpha wants them."""
    if problem.loss_fn is F.mse_loss:
        per = F.mse_loss(out, y, reduction="none")
    else:
        logits = out.transpose(1, 2) if out.dim() == 3 else out
        per = F.cross_entropy(logits, y, reduction="none")
    return per.reshape(per.shape[0], -1).mean(1)


def train(
    problem: Problem, device: torch.device, autocast: bool = False
) -> tuple[Cockpit, dict[int, dict[str, Any]], list[dict[str, str]]]:
    """``STEPS`` steps of SGD with momentum, every ``full`` instrument every step."""
    model, x, y = problem.make(0)  # built on the CPU: equal start on every device
    model, x, y = model.to(device), x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        run="t",
        instruments=[c(schedule=always) for c in PRESETS["full"]],
        budget=None,
    )
    for step in range(STEPS):
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
            losses = sample_losses(problem, out, y)
            loss = losses.mean()
        with cockpit.step(step, loss=loss, losses=losses):
            loss.backward()
        opt.step()
    cockpit.close()
    frames = cockpit.transport.frames  # type: ignore[attr-defined]
    errors = [dict(f.errors) for f in frames if isinstance(f, Readings) and f.errors]
    return cockpit, cockpit.readings, errors


def assert_close(got: Any, want: Any, where: str, rtol: float = RTOL) -> None:
    """Same structure; numbers to ``rtol``; histogram counts up to edge moves."""
    if want is None or got is None:
        assert got is None and want is None, where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            if k == "counts":
                assert_counts(got[k], want[k], where)
            elif k == "stderr":
                continue  # compared with the trace below
            else:
                assert_close(got[k], want[k], f"{where}[{k}]", rtol)
    elif isinstance(want, Tensor):
        torch.testing.assert_close(
            got.double().cpu(), want.double().cpu(), rtol=rtol, atol=1e-6
        )
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), where
    elif isinstance(want, (int, float)):
        assert got == pytest.approx(want, rel=rtol, abs=1e-6), where
    else:
        assert got == want, where


def assert_counts(got: Tensor, want: Tensor, where: str) -> None:
    """Equal totals; at most 0.5 % of the counts moved to a neighbouring bin."""
    g, w = got.double().cpu(), want.double().cpu()
    assert float(g.sum()) == float(w.sum()), where
    assert float((g - w).abs().sum()) <= 0.01 * float(w.sum()) + 2, where


def hutchinson(reading: Any) -> bool:
    return isinstance(reading, dict) and reading.get("stderr") is not None


@pytest.mark.parametrize("problem", MODELS, ids=make_id)
def test_every_full_instrument_on_cuda_equals_the_cpu_run(
    problem: Problem, exact_float32: None, torch_threads: None
) -> None:
    gpu, on_gpu, gpu_errors = train(problem, DEVICE)
    cpu, on_cpu, cpu_errors = train(problem, torch.device("cpu"))
    assert gpu.disabled == cpu.disabled == {}
    assert gpu_errors == cpu_errors
    for step in range(STEPS):
        assert set(on_gpu[step]) == set(on_cpu[step])
        for name, want in on_cpu[step].items():
            got, where = on_gpu[step][name], f"step {step} {name}"
            if name == "time":
                continue
            if name == "hess_trace" and hutchinson(want):
                # Random probes from per-device generators: the two estimates
                # agree within their standard errors.
                spread = math.hypot(want["stderr"], got["stderr"])
                assert abs(got["total"] - want["total"]) <= 5 * spread + 1e-6, where
                continue
            rtol = 1e-2 if name == "hess_max_ev" else RTOL  # Lanczos rtol 1e-3
            assert_close(got, want, where, rtol)


@pytest.mark.parametrize(
    "problem", [BY_NAME["cnn"], ENCODER, CAUSAL_LM, RES_CNN], ids=make_id
)
def test_default_tf32_and_bf16_autocast_run_every_instrument(
    problem: Problem, torch_threads: None
) -> None:
    # What GPU users run: cuDNN convolutions in TF32 (PyTorch's default), bf16
    # autocast. The engine's Σ ĝ_n = .grad check must hold at that precision.
    for autocast in (False, True):
        cockpit, readings, errors = train(problem, DEVICE, autocast=autocast)
        assert cockpit.disabled == {}, autocast
        allowed = ("train mode",) if problem is RES_CNN_TRAIN else ()
        for e in errors:
            assert all(any(a in m for a in allowed) for m in e.values()), e
        for step in range(STEPS):
            for name in ("norm_test", "inner_test", "tic_diag", "grad_norm"):
                value = readings[step][name]
                total = value["total"] if isinstance(value, dict) else value
                assert total is not None and math.isfinite(total), (name, step)


def test_bf16_autocast_statistics_match_float32_to_bf16_precision(
    torch_threads: None,
) -> None:
    full, bf16 = train(ENCODER, DEVICE)[1], train(ENCODER, DEVICE, autocast=True)[1]
    for name in ("norm_test", "inner_test", "ortho_test", "grad_norm", "tic_diag"):
        a, b = full[0][name], bf16[0][name]
        a = a["total"] if isinstance(a, dict) else a
        b = b["total"] if isinstance(b, dict) else b
        assert b == pytest.approx(a, rel=0.1), name


def test_readings_stay_on_the_host_and_model_on_the_device(
    torch_threads: None,
) -> None:
    cockpit, readings, _ = train(BY_NAME["cnn"], DEVICE)
    for reading in readings[0].values():
        for v in reading.values() if isinstance(reading, dict) else [reading]:
            assert not isinstance(v, Tensor) or v.device.type == "cpu"
    assert all(p.device.type == DEVICE.type for p in cockpit.model.parameters())
    assert all(
        p.grad is None or p.grad.device.type == DEVICE.type
        for p in cockpit.model.parameters()
    )


class _Wide(nn.Module):
    """A GPU-sized MLP: per-sample work large enough to use the device."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(512, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def test_economy_every_step_on_a_wide_model_keeps_the_gradients(
    exact_float32: None,
) -> None:
    # The user's .grad after the step is what plain training computes.
    torch.manual_seed(0)
    model = _Wide().to(DEVICE)
    twin = _Wide().to(DEVICE)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(256, 512, device=DEVICE)
    y = torch.randint(0, 10, (256,), device=DEVICE)
    economy = [c(schedule=always) for c in PRESETS["economy"]]
    cockpit = Cockpit(model, None, server=None, instruments=economy, budget=None)
    out = model(x)
    losses = F.cross_entropy(out, y, reduction="none")
    with cockpit.step(0, loss=losses.mean(), losses=losses):
        losses.mean().backward()
    cockpit.close()
    F.cross_entropy(twin(x), y).backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    assert cockpit.readings[0]["norm_test"]["total"] is not None


def test_fp16_autocast_with_grad_scaler_reads_the_unscaled_gradients(
    torch_threads: None,
) -> None:
    # fp16 training: autocast plus GradScaler (loss scale 2^16). The readings
    # are the float32 run's to fp16 precision, not 65536 times larger.
    def run(fp16: bool) -> dict[int, dict[str, Any]]:
        model, x, y = BY_NAME["cnn"].make(0)
        model, x, y = model.to(DEVICE), x.to(DEVICE), y.to(DEVICE)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler(DEVICE.type, enabled=fp16)
        names = ("grad_norm", "norm_test", "inner_test", "alpha", "tic_diag")
        cockpit = Cockpit(
            model,
            opt,
            server=None,
            instruments=[
                c(schedule=always) for c in PRESETS["full"] if c.name in names
            ],
            budget=None,
            scaler=scaler,
        )
        for step in range(3):
            opt.zero_grad()
            with torch.autocast(DEVICE.type, dtype=torch.float16, enabled=fp16):
                losses = sample_losses(BY_NAME["cnn"], model(x), y)
                loss = losses.mean()
            with cockpit.step(step, loss=loss, losses=losses):
                scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        cockpit.close()
        assert cockpit.disabled == {}
        return cockpit.readings

    want, got = run(False), run(True)
    for name in ("grad_norm", "norm_test", "inner_test", "tic_diag"):
        a, b = want[0][name], got[0][name]
        a = a["total"] if isinstance(a, dict) else a
        b = b["total"] if isinstance(b, dict) else b
        assert b == pytest.approx(a, rel=0.05), name
