"""A fast slice of the diagnosis zoo: one architecture, one seed per class.

The full zoo (three architectures, three seeds, every class) is
``python -m bench.diagnosis``; its table is in docs/diagnosis.md.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.diagnosis.zoo import FAILURES, Case, run_case


@pytest.mark.parametrize(
    "failure", ["lr_div1000", "dead_relu", "sigmoid_deep", "large_init_deep"]
)
def test_each_failure_is_named_by_its_rule(failure: str, torch_threads: None) -> None:
    result = run_case(Case(failure=failure, arch="mlp", seed=0, **FAILURES[failure]))
    assert result.hit_step is not None, result.detected
    # Named before (or when) the loss curve alone shows anything.
    assert result.loss_step is None or result.hit_step <= result.loss_step


def test_a_healthy_run_gets_no_diagnosis(torch_threads: None) -> None:
    result = run_case(Case(failure="healthy", arch="mlp", seed=0, steps=120))
    assert result.detected == {}


@pytest.mark.parametrize("failure", ["lr_x100", "inputs_x255"])
def test_adam_on_a_pre_ln_transformer_is_named_too(
    failure: str, torch_threads: None
) -> None:
    # Adam's overshoot (α and λ_max say little) and inputs behind LayerNorm
    # (the histogram says little): read off the relative update and the input
    # layer's gradients.
    case = Case(failure=failure, arch="transformer", seed=0, **FAILURES[failure])
    result = run_case(replace(case, steps=40))
    assert result.hit_step is not None, result.detected
