"""Each rule on hand-made readings: fires on its criterion, silent just below it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from glasscockpit.diagnosis import (
    RULES,
    Diagnoser,
    DiagnosisSettings,
    Finding,
    History,
    Rule,
    Thresholds,
)
from glasscockpit.protocol import Array


def feed(d: Diagnoser, frames: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """Feed ``(step, values)`` frames; the rules that fired, in order."""
    for step, values in frames:
        d.feed(step, values)
    return [x.rule for x in d.diagnoses]


def run(
    frames: list[tuple[int, dict[str, Any]]], meta: dict[str, Any] | None = None
) -> list[str]:
    d = Diagnoser()
    names = {n.split(":")[0] for _, v in frames for n in v}
    d.declare(names, meta or {})
    return feed(d, frames)


def test_registry_is_complete_and_documented():
    names = [r.name for r in RULES]
    assert len(names) == len(set(names)) == 13
    for cls in RULES:
        rule = cls()
        assert rule.title and rule.explanation and rule.remedies and rule.source
        assert rule.needs and all(
            isinstance(v, float) for v in rule.thresholds.values()
        )


def test_divergence_fires_at_the_first_nan_loss():
    frames = [(s, {"loss": 1.0}) for s in range(5)] + [(5, {"loss": math.nan})]
    d = Diagnoser()
    d.declare(["loss"], {})
    feed(d, frames)
    [diag] = d.diagnoses
    assert (diag.rule, diag.severity, diag.detected_step) == (
        "divergence",
        "critical",
        5,
    )
    assert math.isnan(diag.evidence["loss"])
    assert diag.as_dict()["evidence"]["loss"] == "NaN"


def test_divergence_on_blowup_and_not_just_below():
    base = [(s, {"loss": 2.0}) for s in range(10)]
    assert run([*base, (10, {"loss": 20.1})]) == ["divergence"]
    assert run([*base, (10, {"loss": 19.9})]) == []


def grads(step: int, total: float, **layers: float) -> tuple[int, dict[str, Any]]:
    return step, {"grad_norm": {"total": total, **layers}, "loss": 1.0}


def test_exploding_on_nonfinite_layer_names_the_layer():
    d = Diagnoser()
    d.declare(["grad_norm", "loss"], {})
    feed(
        d,
        [
            grads(0, 1.0, **{"a.weight": 1.0}),
            grads(1, math.inf, **{"a.weight": math.inf}),
        ],
    )
    [diag] = d.diagnoses
    assert (diag.rule, diag.key, diag.severity) == (
        "exploding_gradients",
        "a.weight",
        "critical",
    )


def test_exploding_on_growth_unless_the_loss_falls():
    slow = [grads(s, 1.0) for s in range(20)] + [grads(20 + s, 12.0) for s in range(5)]
    assert run(slow) == ["exploding_gradients"]
    # The same growth while the loss halves is a model leaving its plateau.
    falling = [(s, {**v, "loss": 1.0 if s < 15 else 0.4}) for s, v in slow]
    assert run(falling) == []
    assert (
        run([grads(s, 1.0) for s in range(20)] + [grads(20 + s, 9.0) for s in range(5)])
        == []
    )


def test_vanishing_needs_orders_of_magnitude_between_first_and_last_weights():
    def frames(ratio: float) -> list[tuple[int, dict[str, Any]]]:
        return [
            grads(s, 1.0, **{"0.weight": ratio, "0.bias": 1e-9, "9.weight": 1.0})
            for s in range(5)
        ]

    assert run(frames(0.9e-3)) == ["vanishing_gradients"]
    assert run(frames(1.1e-3)) == []


def test_dead_units_need_exactly_zero_over_the_window():
    dead = [grads(s, 1.0, **{"0.weight": 0.0, "1.weight": 1.0}) for s in range(5)]
    assert run(dead) == ["dead_units"]
    almost = [grads(s, 1.0, **{"0.weight": 1e-30 if s == 2 else 0.0}) for s in range(5)]
    assert run(almost) == []


def test_lr_too_large_needs_alpha_above_one_and_a_rising_loss():
    def frames(alpha: float, loss_after: float) -> list[tuple[int, dict[str, Any]]]:
        out: list[tuple[int, dict[str, Any]]] = [(s, {"loss": 1.0}) for s in range(10)]
        out += [(10 + s, {"loss": loss_after}) for s in range(10)]
        out += [(s * 5, {"alpha": alpha}) for s in range(4)]
        return out

    assert run(frames(1.5, 1.2)) == ["lr_too_large"]
    assert run(frames(0.9, 1.2)) == []  # overshooting but below the mirror point
    assert run(frames(1.5, 0.8)) == []  # large steps, but the loss falls


def test_lr_too_small_on_first_order_progress():
    def frames(update: float) -> list[tuple[int, dict[str, Any]]]:
        return [
            (
                s,
                {
                    "loss": 2.0,
                    "grad_norm": {"total": 1.0},
                    "update_size": {"total": update},
                },
            )
            for s in range(10)
        ]

    assert run(frames(1e-4)) == ["lr_too_small"]  # ‖g‖‖d‖/L = 5e-5 < 1e-4
    assert run(frames(1e-3)) == []


def test_lr_too_small_is_silent_after_annealing():
    frames = [
        (
            s,
            {
                "loss": 2.0,
                "grad_norm": {"total": 1.0},
                "update_size": {"total": 1e-5},
                "lr": {"total": 1.0 if s == 0 else 0.01},
            },
        )
        for s in range(10)
    ]
    assert run(frames) == []


def test_edge_of_stability_with_momentum_and_only_for_sgd():
    def frames(lam: float) -> list[tuple[int, dict[str, Any]]]:
        return [
            (s, {"loss": 1.0, "lr": {"total": 0.1}, "hess_max_ev": lam})
            for s in range(3)
        ]

    sgd = {"optimizer": "SGD", "optimizer_defaults": {"momentum": 0.9}}
    assert run(frames(38.5), sgd) == ["edge_of_stability"]  # 3.85 ≥ 2(1 + 0.9)
    assert run(frames(37.5), sgd) == []
    d = Diagnoser()
    d.declare(["loss", "lr", "hess_max_ev"], {"optimizer": "Adam"})
    assert feed(d, frames(100.0)) == []
    [why] = [u for u in d.unavailable() if u["rule"] == "edge_of_stability"]
    assert "Adam" in why["reason"]


def test_batch_too_small_suggests_a_batch_size():
    frames = [(s, {"loss": 1.0, "norm_test": {"total": 1.2}}) for s in range(110)]
    d = Diagnoser()
    d.declare(["loss", "norm_test"], {"batch_size": 8})
    feed(d, frames)
    [diag] = [x for x in d.diagnoses if x.rule == "batch_too_small"]
    assert diag.rule == "batch_too_small"
    assert diag.evidence["suggested_batch_size"] == round(8 * (1.2 / 0.5) ** 2)
    below = [(s, {"loss": 1.0, "norm_test": {"total": 0.95}}) for s in range(110)]
    assert "batch_too_small" not in run(below)
    learning = [
        (s, {"loss": 1.0 if s < 30 else 0.8, "norm_test": {"total": 1.2}})
        for s in range(110)
    ]
    assert "batch_too_small" not in run(learning)  # noise dominates, run progresses
    crawling = [
        (
            s,
            {
                "loss": 1.0,
                "norm_test": {"total": 1.2},
                "grad_norm": {"total": 1.0},
                "update_size": {"total": 1e-5},
            },
        )
        for s in range(110)
    ]
    assert "batch_too_small" not in run(crawling)  # lr_too_small's case


def histogram(edge: float) -> dict[str, Any]:
    counts = [edge / 2] + [(1 - edge) / 98] * 98 + [edge / 2]
    return {
        "counts": Array("<f8", (100,), b"".join(_f8(c * 1000) for c in counts)),
        "edges": [-2.0 + 0.04 * i for i in range(101)],
    }


def _f8(x: float) -> bytes:
    import struct

    return struct.pack("<d", x)


def test_badly_scaled_reads_wire_arrays():
    assert run([(0, {"grad_hist_1d": histogram(0.06)})]) == ["badly_scaled"]
    assert run([(0, {"grad_hist_1d": histogram(0.04)})]) == []


def test_overfitting_by_prechelts_generalisation_loss():
    def frames(valid: list[float]) -> list[tuple[int, dict[str, Any]]]:
        train = [1.0 - 0.1 * i for i in range(len(valid))]
        return [
            (s * 10, {"epoch_loss": {"train": t, "valid": v}})
            for s, (t, v) in enumerate(zip(train, valid, strict=True))
        ]

    assert run(frames([1.0, 0.8, 0.7, 0.72, 0.74])) == ["overfitting"]  # GL 5.7 %
    assert run(frames([1.0, 0.8, 0.7, 0.72, 0.73])) == []  # GL 4.3 %
    assert run(frames([1.0, 0.8, 0.7, 0.76, 0.75])) == []  # not rising twice (UP_2)


def test_early_stopping_eb_and_plateau_and_oscillation():
    eb = [(s, {"early_stopping": {"total": 0.2}}) for s in range(20)]
    assert run(eb) == ["early_stopping"]
    flat = [(s, {"loss": 1.0 + 0.01 * (s % 3)}) for s in range(100)]
    assert "plateau" in run(flat)
    flip = [(s, {"loss": 1.0 if s % 2 else 2.0}) for s in range(40)]
    assert "oscillation" in run(flip)
    noise = [(s, {"loss": 1.0 + 0.05 * ((s * 7919) % 13) / 13}) for s in range(40)]
    assert "oscillation" not in run(noise)


def test_unavailable_rules_say_which_instrument_they_need():
    d = Diagnoser()
    d.declare(["loss"], {})
    needs = {u["rule"]: u["needs"] for u in d.unavailable()}
    assert needs["lr_too_large"] == ["alpha"]
    assert needs["edge_of_stability"] == ["hess_max_ev", "lr"]
    assert "divergence" not in needs
    reasons = {u["rule"]: u["reason"] for u in d.unavailable()}
    assert reasons["overfitting"] == "needs instrument(s) epoch_loss"
    d.declare(["loss", "epoch_loss"], {})
    reasons = {u["rule"]: u["reason"] for u in d.unavailable()}
    assert "valid_loss" in reasons["overfitting"]


def test_settings_disable_rules_and_change_thresholds():
    s = DiagnosisSettings.parse("plateau", "divergence.blowup=100")
    d = Diagnoser(settings=s)
    d.declare(["loss"], {})
    base = [(i, {"loss": 2.0}) for i in range(120)]
    assert feed(d, [*base, (120, {"loss": 50.0})]) == []  # 25× < 100×, no plateau
    assert d.diagnoses == []
    with pytest.raises(ValueError, match="rule.threshold=value"):
        DiagnosisSettings.parse("", "divergence=3")
    with pytest.raises(ValueError, match="no threshold"):
        Diagnoser(settings=DiagnosisSettings.parse("", "divergence.nope=3"))
    with pytest.raises(ValueError, match="Unknown diagnosis rule"):
        Diagnoser(settings=DiagnosisSettings.parse("nope"))
    assert Diagnoser(settings=DiagnosisSettings.parse("all")).rules == []


class LossAboveTen(Rule):
    name = "loss_above_ten"
    title = "Loss above 10"
    needs = ("loss",)
    thresholds = {"limit": 10.0}
    explanation = "The loss is larger than this task ever allows."
    remedies = ("Check the labels.",)
    source = "house rule"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        s = h.series("loss")
        return Finding(s.last_step, {"loss": s.last}) if s.last > th["limit"] else None


class Broken(LossAboveTen):
    name = "broken"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        raise RuntimeError("bug")


def test_user_rules_run_and_a_broken_one_is_reported_not_raised():
    d = Diagnoser(rules=[LossAboveTen(), Broken()])
    d.declare(["loss"], {})
    assert feed(d, [(0, {"loss": 5.0}), (1, {"loss": 11.0}), (2, {"loss": 12.0})]) == [
        "loss_above_ten"
    ]
    [diag] = d.diagnoses
    assert (diag.first_step, diag.last_step, diag.steps, diag.count) == (
        1,
        2,
        [1, 2],
        2,
    )
    assert d.broken["broken"] == "RuntimeError: bug"
    assert {
        "rule": "broken",
        "title": "Loss above 10",
        "needs": [],
        "reason": "RuntimeError: bug",
    } in d.unavailable()


def test_callback_gets_each_new_diagnosis_once():
    seen: list[str] = []
    d = Diagnoser(on_diagnosis=lambda x: seen.append(x.rule))
    d.declare(["loss"], {})
    feed(d, [(s, {"loss": math.nan}) for s in range(3)])
    assert seen == ["divergence"]


def test_lr_too_large_on_the_relative_update_and_a_loss_above_the_untrained():
    # ‖θ₀‖ = 10; the bound is ‖Δθ‖/(‖θ₀‖ + ‖θ − θ₀‖) = u / (10 + 10) here.
    meta = {"parameter_norm": 10.0}

    def frames(update: float, loss: float = 1.2) -> list[tuple[int, dict[str, Any]]]:
        return [
            (
                s,
                {
                    "loss": 1.0 if s == 0 else loss,
                    "update_size": {"total": update},
                    "distance": {"total": 10.0},
                    "alpha": 0.0,  # in its band: only the update size speaks
                },
            )
            for s in range(5)
        ]

    assert run(frames(2.01), meta) == ["lr_too_large"]
    assert run(frames(1.99), meta) == []
    # Large steps while the loss stays below 1.1 × the untrained loss: aggressive.
    assert run(frames(2.01, loss=1.09), meta) == []
    assert run(frames(2.01)) == []  # no initial norm sent: no bound, no diagnosis
    # Without distance readings the bound is unknown.
    no_distance = [
        (s, {k: v for k, v in f.items() if k != "distance"}) for s, f in frames(50.0)
    ]
    assert run(no_distance, meta) == []


def test_badly_scaled_reads_the_input_scale_off_the_first_layer():
    # ‖∂W‖/‖∂b‖ = ‖x‖, so over √fan-in (16) the inputs' RMS; the position
    # embedding before the layer has no bias and is not the input layer.
    meta = {
        "parameter_shapes": {
            "pos": [6, 32],
            "proj.weight": [32, 16],
            "proj.bias": [32],
            "head.weight": [4, 32],
            "head.bias": [4],
        }
    }

    def frames(rms: float) -> list[tuple[int, dict[str, Any]]]:
        layers = {"pos": 1.0, "proj.weight": 0.5 * rms * 4.0, "proj.bias": 0.5}
        # Read when a histogram arrives; it has nothing in its edge bins.
        hist = (5, {"grad_hist_1d": histogram(0.0)})
        return [*(grads(s, 1.0, **layers) for s in range(5)), hist]

    assert run(frames(10.5), meta) == ["badly_scaled"]
    assert run(frames(9.5), meta) == []
    # No shapes sent: the input layer is unknown.
    assert "badly_scaled" not in run(frames(1000.0))
    # A first layer without bias gives no reading; the head is no stand-in.
    resnet = {
        "parameter_shapes": {
            "conv1.weight": [64, 3, 7, 7],
            "bn1.weight": [64],
            "bn1.bias": [64],
            "fc.weight": [10, 512],
            "fc.bias": [10],
        }
    }
    head = [
        grads(s, 1.0, **{"conv1.weight": 1.0, "fc.weight": 1e4, "fc.bias": 1.0})
        for s in range(5)
    ]
    assert "badly_scaled" not in run(
        [*head, (5, {"grad_hist_1d": histogram(0.0)})], resnet
    )
