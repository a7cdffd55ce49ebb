"""Every per-sample reading on models nobody here wrote, against per-sample loops.

torchvision's ResNet-18 (GroupNorm, BatchNorm in eval and in train mode),
Hugging Face GPT-2 and BERT called the Hugging Face way (keyword tensors,
``labels=``), timm's ViT and ConvNeXt, ``nn.LSTM`` and ``nn.TransformerEncoder``
in PyTorch's default sequence-first layout (with the sequence length equal to
the batch size, where shapes cannot tell the axes apart) and batch-first: each
defined reading equals the brute-force reference (``tests/agent/real_models.py``);
a reading that cannot be computed is None with its reason, never a number.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest
import torch

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import BY_NAME
from glasscockpit.protocol import Readings
from tests.agent.real_models import (
    CASES,
    GPT2,
    RESNET_BN_TRAIN,
    VIT,
    Case,
    _hf,
    bert,
    gpt2,
    import_torchvision,
    reference,
)
from tests.agent.reference import REFERENCES, Data
from tests.agent.test_any_model import assert_counts_close
from tests.agent.test_instruments import RTOL, assert_reading, variance_conditioning

import_torchvision()
pytest.importorskip("transformers")
pytest.importorskip("timm")

#: Per-sample instruments with brute-force references (TIC's curvature and
#: Alpha are compared on these layouts in test_any_model*.py).
NAMES = (
    "norm_test",
    "inner_test",
    "ortho_test",
    "mean_gsnr",
    "early_stopping",
    "cabs",
    "grad_hist_1d",
    "grad_hist_2d",
)


def exact(name: str) -> Any:
    """The instrument, every step, counting every value where it could sample.

    A histogram samples the per-sample gradients of very wide layers (its
    estimate and its note are tested with the instrument); the loop counts all.
    """
    cls = BY_NAME[name]
    if "sample" in inspect.signature(cls.__init__).parameters:
        return cls(schedule=always, sample=None)
    return cls(schedule=always)


def run_case(case: Case, names: tuple[str, ...] = NAMES) -> tuple[Cockpit, Readings]:
    """One tracked step (``fail_mode="disable"``): the readings frame."""
    torch.set_num_threads(1)
    model, batch = case.make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    insts = [exact(n) for n in names]
    cockpit = Cockpit(
        model, opt, server=None, instruments=[*insts, "loss"], budget=None
    )
    loss = case.forward(model, batch)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    frames = [f for f in cockpit.transport.frames if isinstance(f, Readings)]  # type: ignore[attr-defined]
    return cockpit, frames[0]


@functools.cache
def readings(case: Case) -> tuple[Cockpit, Readings]:
    return run_case(case)


@functools.cache
def truth(case: Case) -> Data:
    torch.set_num_threads(1)
    return reference(case)


def _param(case: Case) -> Any:
    marks = [pytest.mark.slow] if case.slow else []
    return pytest.param(case, id=case.name, marks=marks)


DEFINED = [_param(c) for c in CASES if c is not RESNET_BN_TRAIN]


@pytest.mark.parametrize("case", DEFINED)
def test_every_reading_matches_the_per_sample_loop(case: Case) -> None:
    cockpit, frame = readings(case)
    assert not cockpit.disabled, cockpit.disabled
    data = truth(case)
    for name in NAMES:
        got = cockpit.readings[0][name]
        assert got is not None, (name, frame.errors.get(name))
        assert name not in frame.errors, (name, frame.errors[name])
        inst = BY_NAME[name](schedule=always)
        want = REFERENCES[name](data, inst)
        if name.startswith("grad_hist"):
            assert_counts_close(got.pop("counts"), want.pop("counts"), data, inst)
        for k in _round_off(data):  # noise over noise on both sides
            got.pop(k, None), want.pop(k, None)
        rtol = case.rtol
        if name in ("mean_gsnr", "early_stopping"):
            rtol = max(rtol, 4 * 1.2e-7 * variance_conditioning(data))
        assert_reading(got, want, f"{case}: {name}", rtol)


@pytest.mark.parametrize(
    ("case", "module", "label"),
    [
        (GPT2, ".c_attn.", "conv1d-rule (transposed linear)"),
        (GPT2, ".mlp.c_proj.", "conv1d-rule (transposed linear)"),
        (VIT, ".norm1.", "layernorm-rule"),
    ],
    ids=["gpt2-attn", "gpt2-mlp", "vit-norm"],
)
def test_library_layers_are_served_by_exact_rules(
    case: Case, module: str, label: str
) -> None:
    # Hugging Face's Conv1D and timm's LayerNorm: per-layer rules, not the
    # torch.func fallback (the readings above are then the rules' readings).
    cockpit, _ = readings(case)
    assert cockpit.engine is not None
    served = {n: e for n, e in cockpit.engine.coverage.items() if module in n}
    assert served and set(served.values()) == {label}, served


def _round_off(data: Data) -> list[str]:
    """Parameters whose per-sample gradients are zero in exact arithmetic.

    Attention's key bias shifts every score of a query alike, which softmax
    ignores: its gradients are float32 round-off (1e-9 against 1e-1), and a
    per-layer ratio of them is a ratio of noise (in the totals they vanish).
    """
    top = max(float(g.abs().max()) for g in data.per_sample.values())
    return [n for n, g in data.per_sample.items() if float(g.abs().max()) < 1e-6 * top]


def test_train_mode_batchnorm_reads_none_naming_every_layer() -> None:
    cockpit, frame = readings(RESNET_BN_TRAIN)
    assert not cockpit.disabled
    for name in NAMES:
        assert frame.values[name] is None, name
        assert "bn1" in frame.errors[name], frame.errors[name]
        assert "layer4.1.bn2" in frame.errors[name], frame.errors[name]


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (gpt2(dropout=0.1), ("transformer.wpe.weight", "transformer.wte.weight")),
        (bert(dropout=0.1), ("bert.embeddings.position_embeddings.weight",)),
    ],
    ids=["gpt2", "bert"],
)
def test_embeddings_are_covered_with_dropout(build: Any, names: Any) -> None:
    # Dropout rules out the whole-model re-run. Positions [1, T] broadcast over
    # the batch are served by the embedding rule on the output expanded to the
    # batch; GPT-2's token embedding tied to its head by the two rules' per-sample
    # gradients, summed. In eval mode (no mask) the loop reproduces the batch.
    def make() -> Any:
        model, batch = build()
        return model.eval(), batch

    case = Case("dropout", make, _hf)
    cockpit, frame = run_case(case)
    assert cockpit.engine is not None
    assert not cockpit.engine.uncovered, cockpit.engine.coverage
    position, *tied = names
    assert cockpit.engine.coverage[position] == "embedding-rule"
    for name in tied:
        assert cockpit.engine.coverage[name].startswith(
            "tied: embedding-rule + linear-rule"
        )
    data = truth(case)
    for inst in NAMES:
        if inst.startswith("grad_hist"):
            continue  # default ranges: compared on the table's models above
        ref = REFERENCES[inst](data, BY_NAME[inst](schedule=always))
        got, want = cockpit.readings[0][inst], ref
        for k in _round_off(data):
            got.pop(k, None), want.pop(k, None)
        assert_reading(got, want, inst, max(RTOL, 5e-7 * variance_conditioning(data)))
