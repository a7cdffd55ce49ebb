"""The zoo: training runs broken in one known way each, plus healthy runs.

``run_case`` trains one case with a real ``Cockpit`` (in memory, no server) and
feeds its frames to a ``Diagnoser`` exactly as the server does (hello, then each
readings frame in order). A second diagnoser with only the loss-curve rules
(divergence, plateau, oscillation, overfitting) gives the step at which the loss
curve alone shows the failure, for the lead time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.diagnosis.models import Spec, build
from bench.diagnosis.tasks import make_data
from glasscockpit.agent import Cockpit
from glasscockpit.agent.instruments import EarlyStopping, HessMaxEV, resolve
from glasscockpit.diagnosis import Diagnoser
from glasscockpit.diagnosis.rules import Divergence, Oscillation, Overfitting, Plateau
from glasscockpit.protocol import Hello, Readings

ARCHS = ("mlp", "cnn", "transformer")
BASE_LR = {"mlp": 0.1, "cnn": 0.02, "transformer": 1e-3}
#: The transformer trains with Adam (as transformers do), the CNN with SGD and
#: momentum 0.9 (as CNNs do), the MLP with plain SGD; the edge-of-stability case
#: is SGD with momentum 0.9 on every architecture.
ADAM = ("transformer",)
MOMENTUM = {"cnn": 0.9}


@dataclass(frozen=True)
class Case:
    """One zoo run: a failure class on an architecture with a seed."""

    failure: str
    arch: str
    seed: int
    lr_factor: float = 1.0
    momentum: float = 0.0
    batch: int = 32
    label_noise: float = 0.0
    input_scale: float = 1.0
    breakage: str = ""
    n_train: int = 2048
    steps: int = 200
    eos: bool = False  # set the rate at 1.1 × the heavy-ball limit at init
    #: Rules that name this failure's cause (any one counts as detected).
    expect: tuple[str, ...] = ()


#: failure class -> (case fields, rules naming the cause).
FAILURES: dict[str, dict[str, Any]] = {
    "healthy": {},
    "lr_x100": {"lr_factor": 100.0, "expect": ("lr_too_large", "edge_of_stability")},
    "lr_div1000": {"lr_factor": 1e-3, "expect": ("lr_too_small",)},
    "batch2_noisy": {"batch": 2, "label_noise": 0.5, "expect": ("batch_too_small",)},
    "inputs_x255": {"input_scale": 255.0, "expect": ("badly_scaled",)},
    "dead_relu": {"breakage": "dead_relu", "expect": ("dead_units",)},
    "sigmoid_deep": {"breakage": "sigmoid_deep", "expect": ("vanishing_gradients",)},
    "large_init_deep": {
        "breakage": "large_init_deep",
        # The cause is the initialisation's scale, which badly_scaled names.
        "expect": ("exploding_gradients", "badly_scaled"),
    },
    "tiny_train": {
        "n_train": 32,
        "label_noise": 0.3,
        "steps": 300,
        "expect": ("overfitting", "early_stopping"),
    },
    "momentum_eos": {"momentum": 0.9, "eos": True, "expect": ("edge_of_stability",)},
}


def cases(seeds: tuple[int, ...], archs: tuple[str, ...] = ARCHS) -> list[Case]:
    """Every failure class on every architecture and seed."""
    return [
        Case(failure=f, arch=a, seed=s, **kw)
        for f, kw in FAILURES.items()
        for a in archs
        for s in seeds
    ]


def instruments() -> list[Any]:
    """The economy preset plus EB and λ_max, default schedules, for every run."""
    return [*resolve("economy"), EarlyStopping(), HessMaxEV()]


def top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """λ_max of the mini-batch loss's Hessian by power iteration (30 products)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with sdpa_kernel(SDPBackend.MATH):  # fused attention has no double backward
        loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    lam = 0.0
    for _ in range(30):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(v, hv, strict=True))
        v = [h.detach() for h in hv]
    return lam


@dataclass
class Result:
    """What one case produced."""

    case: Case
    detected: dict[str, int] = field(default_factory=dict)  # rule -> step made
    loss_step: int | None = None  # loss-curve rules' first detection
    steps_run: int = 0
    frames: int = 0
    us_per_frame: float = 0.0
    train_s: float = 0.0
    diagnoses: list[dict[str, Any]] = field(default_factory=list)
    #: The run's frames (hello, readings, bye), for the server overhead bench.
    log: list[Any] = field(default_factory=list)

    @property
    def hit_step(self) -> int | None:
        """First step at which a rule naming the cause fired (None: missed)."""
        steps = [s for r, s in self.detected.items() if r in self.case.expect]
        return min(steps) if steps else None


def run_case(case: Case) -> Result:
    """Train ``case`` and diagnose its frames."""
    torch.manual_seed(case.seed)
    model = build(Spec(case.arch, case.breakage))
    data = make_data(case.arch, case.n_train, case.seed, case.label_noise)
    lr = BASE_LR[case.arch] * case.lr_factor
    if case.eos:
        lam = top_eigenvalue(model, data.x[:256] * case.input_scale, data.y[:256])
        lr = 1.1 * 2 * (1 + case.momentum) / max(lam, 1e-6)
    opt: torch.optim.Optimizer
    if case.arch in ADAM and not case.eos:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        beta = case.momentum or MOMENTUM.get(case.arch, 0.0)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=beta)
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        run=f"{case.failure}-{case.arch}-{case.seed}",
        instruments=instruments(),
        budget=None,
        meta={"batch_size": case.batch},
    )
    gen = torch.Generator().manual_seed(case.seed)
    x_all, y_all = data.x * case.input_scale, data.y
    xv = data.x_valid * case.input_scale
    bad_since: int | None = None
    start = time.perf_counter()
    step = 0
    for step in range(case.steps):
        idx = torch.randint(0, len(x_all), (case.batch,), generator=gen)
        x, y = x_all[idx], y_all[idx]
        opt.zero_grad()
        out = model(x)
        losses = F.cross_entropy(out, y, reduction="none")
        loss = losses.mean()
        with cockpit.step(step, loss=loss, batch_size=case.batch, losses=losses):
            loss.backward()
        opt.step()
        if step % 20 == 19:
            with torch.no_grad():
                cockpit.log(
                    step,
                    train_loss=float(F.cross_entropy(model(x_all), y_all)),
                    valid_loss=float(F.cross_entropy(model(xv), data.y_valid)),
                )
        if not math.isfinite(float(loss.detach())):
            bad_since = step if bad_since is None else bad_since
            if step - bad_since >= 5:
                break  # what a user would do: the run is lost
    cockpit.close()
    train_s = time.perf_counter() - start
    frames = cockpit.transport.frames  # type: ignore[attr-defined]
    return diagnose(case, frames, step + 1, train_s)


def diagnose(case: Case, frames: list[Any], steps: int, train_s: float) -> Result:
    """Feed the frames to the full and the loss-only diagnosers."""
    full = Diagnoser()
    loss_only = Diagnoser(rules=[Divergence(), Plateau(), Oscillation(), Overfitting()])
    for frame in frames:
        if isinstance(frame, Hello):
            keys = [i.name for i in frame.instruments]
            full.declare(keys, frame.meta)
            loss_only.declare(keys, frame.meta)
        elif isinstance(frame, Readings):
            full.feed(frame.step, frame.values)
            loss_only.feed(frame.step, frame.values)
    detected: dict[str, int] = {}
    for d in full.diagnoses:
        detected[d.rule] = min(detected.get(d.rule, d.detected_step), d.detected_step)
    loss_steps = [d.detected_step for d in loss_only.diagnoses]
    return Result(
        case=case,
        detected=detected,
        loss_step=min(loss_steps) if loss_steps else None,
        steps_run=steps,
        frames=full.frames,
        us_per_frame=full.us_per_frame,
        train_s=train_s,
        diagnoses=[d.as_dict() for d in full.diagnoses],
        log=list(frames) if case.failure == "healthy" else [],
    )


def with_seed(case: Case, seed: int) -> Case:
    """The same case with another seed."""
    return replace(case, seed=seed)
