"""Real protocol frames of a full Cockpit run, for the dashboard's tests and bench.

The instruments that exist in ``agent/`` are streamed by a real agent in the
tests; this module stands in for the ones still being written (every kind:
scalar, per_layer, histogram, heatmap, with the PanelSpec hints they will
likely set), so every panel type of the grid can be exercised now. Values
follow plausible training curves from a seeded generator; they are frames
built with ``glasscockpit.protocol``, not screenshots of a real model.
"""

from __future__ import annotations

import math
import time

import numpy as np

from glasscockpit.protocol import (
    Array,
    Bye,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    Value,
)

LAYERS = ("0.weight", "0.bias", "2.weight", "2.bias")
TESTS_HELP = "Below 1 (green band): the gradient signal dominates the noise."


def _spec(name: str, kind: Kind, **panel: object) -> InstrumentSpec:
    return InstrumentSpec(name, kind, PanelSpec(**panel), "every step")  # type: ignore[arg-type]


SPECS: tuple[InstrumentSpec, ...] = (
    _spec(
        "alpha",
        Kind.SCALAR,
        title="Alpha",
        y_label="α",
        group="step size",
        help="Where the step landed on the local parabola: 0 = valley floor, "
        ">1 = past the point of equal loss (step too large); tuned SGD sits "
        "slightly above 0.",
        ref_lines=(-1.0, 0.0, 1.0),
        smooth=True,
        distribution="alpha",
    ),
    _spec(
        "distance",
        Kind.PER_LAYER,
        title="Distance from init",
        y_label="‖θ−θ₀‖",
        group="step size",
        help="How far the weights moved from initialisation; steady growth is "
        "normal, a plateau means training stalled.",
    ),
    _spec(
        "update_size",
        Kind.PER_LAYER,
        title="Update size",
        y_label="‖Δθ‖",
        log_y=True,
        group="step size",
        help="Length of each optimizer step; collapsing to 0 means no progress.",
    ),
    _spec(
        "grad_norm",
        Kind.PER_LAYER,
        title="Gradient norm",
        y_label="‖g‖₂",
        log_y=True,
        group="step size",
        help="Size of the mini-batch gradient; spikes warn of instability.",
    ),
    _spec(
        "lr",
        Kind.PER_LAYER,
        title="Learning rate",
        y_label="lr",
        log_y=True,
        group="step size",
        help="Learning rate per parameter group.",
    ),
    _spec(
        "norm_test",
        Kind.SCALAR,
        title="Norm test",
        y_label="statistic",
        group="gradients",
        help=TESTS_HELP,
        band=(0.0, 1.0),
        card="Gradient tests",
    ),
    _spec(
        "inner_test",
        Kind.SCALAR,
        title="Inner-product test",
        y_label="statistic",
        group="gradients",
        help="",
        band=(0.0, 1.0),
        card="Gradient tests",
    ),
    _spec(
        "ortho_test",
        Kind.SCALAR,
        title="Orthogonality test",
        y_label="statistic",
        group="gradients",
        help="",
        band=(0.0, 1.0),
        card="Gradient tests",
    ),
    _spec(
        "grad_hist_1d",
        Kind.HISTOGRAM,
        title="Gradient element histogram",
        x_label="gradient element",
        group="gradients",
        help="Spike at 0: vanishing gradients; mass in the edge bins: exploding "
        "gradients or a range set too small.",
    ),
    _spec(
        "grad_hist_2d",
        Kind.HEATMAP,
        title="Gradient vs parameter",
        x_label="parameter value",
        y_label="gradient element",
        group="gradients",
        help="Which weights get large gradients: e.g. big gradients only on "
        "near-zero weights, or saturated weights with none.",
    ),
    _spec(
        "mean_gsnr",
        Kind.SCALAR,
        title="Mean GSNR",
        y_label="GSNR",
        log_y=True,
        group="gradients",
        help="Gradient signal-to-noise ratio: high = samples agree on the "
        "direction; it decays as the model fits the data.",
    ),
    _spec(
        "hess_max_ev",
        Kind.SCALAR,
        title="Hessian max eigenvalue",
        y_label="λ_max",
        group="curvature",
        help="Sharpness (sign kept); lr·λ_max > 2 diverges on a quadratic.",
    ),
    _spec(
        "hess_trace",
        Kind.PER_LAYER,
        title="Hessian trace",
        y_label="tr H",
        group="curvature",
        help="Total curvature: rising means entering sharper regions.",
    ),
    _spec(
        "tic_diag",
        Kind.SCALAR,
        title="TIC (diagonal)",
        y_label="TIC",
        log_y=True,
        group="curvature",
        help="Curvature-vs-noise Tr(H⁻¹C); near convergence, growth suggests "
        "overfitting.",
        card="TIC",
    ),
    _spec(
        "tic_trace",
        Kind.SCALAR,
        title="TIC (trace)",
        y_label="TIC",
        log_y=True,
        group="curvature",
        card="TIC",
    ),
    _spec(
        "cabs",
        Kind.SCALAR,
        title="CABS batch size",
        y_label="batch size",
        log_y=True,
        group="other",
        help="Batch size the CABS rule suggests for this learning rate; growth "
        "means noise rises relative to the loss.",
    ),
    _spec(
        "early_stopping",
        Kind.SCALAR,
        title="Early stopping",
        y_label="criterion",
        group="other",
        help="Evidence-based criterion: stop when it stays above 0 (dashed line).",
        ref_lines=(0.0,),
    ),
    _spec(
        "loss",
        Kind.SCALAR,
        title="Mini-batch loss",
        y_label="loss",
        log_y=True,
        group="performance",
        help="Training loss per step; watch the smoothed trend, not single values.",
        smooth=True,
    ),
    _spec(
        "train_accuracy",
        Kind.SCALAR,
        title="Train accuracy",
        y_label="accuracy",
        group="performance",
        help="Epoch-level accuracy on training and validation data.",
        card="Accuracy",
    ),
    _spec(
        "valid_accuracy",
        Kind.SCALAR,
        title="Validation accuracy",
        y_label="accuracy",
        group="performance",
        card="Accuracy",
    ),
    _spec(
        "time",
        Kind.SCALAR,
        title="Step time",
        y_label="seconds",
        group="performance",
        help="Wall time per step; spikes show slow instruments or data loading.",
    ),
)


def hello(run: str, specs: tuple[InstrumentSpec, ...] = SPECS) -> Hello:
    """The hello frame of a synthetic full-Cockpit run."""
    return Hello(
        run=run,
        seq=0,
        instruments=specs,
        meta={
            "model": "Sequential(Linear(20, 16), ReLU(), Linear(16, 3))",
            "optimizer": "SGD",
            "optimizer_defaults": {"lr": 0.1, "momentum": 0.0},
            "config": {"batch_size": 64, "instruments": "full"},
        },
    )


def _f32(a: np.ndarray) -> Array:
    a = np.ascontiguousarray(a, dtype="<f4")
    return Array("<f4", tuple(int(n) for n in a.shape), a.tobytes())


def values(
    step: int, rng: np.random.Generator, bad: bool = False, every: int = 10
) -> dict[str, Value]:
    """Every instrument's reading at ``step`` (expensive ones only every ``every``)."""
    decay = math.exp(-step / 400)
    loss = 0.15 + 2.1 * decay + abs(rng.normal(0, 0.08 + 0.1 * decay))
    gn = {
        k: float(0.05 + 0.4 * decay * (i + 1) + abs(rng.normal(0, 0.02)))
        for i, k in enumerate(LAYERS)
    }
    inner = abs(rng.normal(0.3 + 0.5 * (1 - decay), 0.08))
    ortho = abs(rng.normal(0.5 + 0.9 * (1 - decay), 0.1))
    out: dict[str, Value] = {
        "loss": float("nan") if bad else loss,
        "alpha": float(rng.normal(0.25, 0.45)),
        "distance": {"total": 0.05 * math.sqrt(step + 1)}
        | {k: 0.02 * (i + 1) * math.sqrt(step + 1) for i, k in enumerate(LAYERS)},
        "update_size": {"total": 0.01 * (0.2 + decay) + abs(rng.normal(0, 0.001))},
        "norm_test": math.hypot(inner, ortho),
        "inner_test": inner,
        "ortho_test": ortho,
        "mean_gsnr": float(0.02 + 2 * decay + abs(rng.normal(0, 0.05))),
        "time": float(0.01 + abs(rng.normal(0, 0.002))),
        "cabs": float(32 + 200 * (1 - decay) + rng.normal(0, 8)),
        "early_stopping": float(-0.9 * decay + 0.1 * (1 - decay) + rng.normal(0, 0.05)),
    }
    if step % every == 0:
        ev = 2.0 + 30 * (1 - decay) + rng.normal(0, 1.0)
        out["hess_max_ev"] = float(-ev / 4 if step < 30 else ev)
        out["hess_trace"] = {"total": float(40 + 120 * (1 - decay) + rng.normal(0, 4))}
        out["tic_diag"] = float(1e5 * (1 + 0.5 * (1 - decay)) + rng.normal(0, 4e3))
        out["tic_trace"] = float(3e4 * (1 + (1 - decay)) + rng.normal(0, 1e3))
        scale = 0.2 + 0.8 * decay
        edges = np.linspace(-2, 2, 101)
        g = rng.laplace(0, 0.15 * scale, 20_000).clip(-2, 2)
        out["grad_hist_1d"] = {
            "counts": _f32(np.histogram(g, edges)[0]),
            "edges": _f32(edges),
        }
        p = rng.normal(0, 0.6, 20_000).clip(-2, 2)
        g2 = (rng.laplace(0, 0.1 * scale, 20_000) * (1 + 2 * np.exp(-(p**2) * 8))).clip(
            -1, 1
        )
        xe, ye = np.linspace(-2, 2, 51), np.linspace(-1, 1, 41)
        counts2, _, _ = np.histogram2d(g2, p, [ye, xe])  # [ny, nx]: rows gradient
        out["grad_hist_2d"] = {
            "counts": _f32(counts2),
            "x_edges": _f32(xe),
            "y_edges": _f32(ye),
        }
    if step % 50 == 49:
        out["train_accuracy"] = float(0.35 + 0.6 * (1 - decay))
        out["valid_accuracy"] = float(0.33 + 0.55 * (1 - decay))
    out["grad_norm"] = {"total": math.sqrt(sum(v * v for v in gn.values()))} | gn
    out["lr"] = {"total": 0.1 * (0.5 + 0.5 * math.cos(math.pi * min(step / 5000, 1)))}
    return out


def readings(
    run: str,
    step: int,
    rng: np.random.Generator,
    bad: bool = False,
    every: int = 10,
    wall_time: float | None = None,
) -> Readings:
    """The readings frame of ``step`` (seq = step + 1, after the hello)."""
    return Readings(
        run=run,
        seq=step + 1,
        step=step,
        wall_time=time.time() if wall_time is None else wall_time,
        values=values(step, rng, bad, every),
    )


def bye(run: str, steps: int) -> Bye:
    """The last frame after ``steps`` readings."""
    return Bye(run=run, seq=steps + 1)
