"""Bugs found on real models (issue 18): each on the model that showed it.

* the samples' axis is followed, not guessed from shapes: a sequence-first model
  input reads None with the reason (``nn.TransformerEncoder`` called directly);
  the default-layout encoder with ``T == B`` is exact (``test_real_models.py``);
* a ``ValueError`` of the whole-model re-run (a loss computed inside the model)
  makes that step's readings None with the reason, the instruments stay on;
* detached ``losses=`` on a partly covered model: α says what it needs;
* ``loss`` without ``loss=`` reads None with the reason.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import BY_NAME
from glasscockpit.protocol import Readings
from tests.agent.test_any_model import PARTIAL


def errors_of(cockpit: Cockpit) -> list[dict[str, str]]:
    """Each step's errors, from its readings frame."""
    frames = [f for f in cockpit.transport.frames if isinstance(f, Readings)]  # type: ignore[attr-defined]
    return [dict(f.errors) for f in frames]


def test_a_sequence_first_model_input_reads_none_with_the_reason(
    torch_threads: None,
) -> None:
    # The model *is* the encoder: its input [T, B, d] has the samples on axis 1,
    # which the whole-model re-run (over axis 0) would split into positions.
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    model = nn.Sequential(
        nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(8, 3)
    )
    x, y = torch.randn(5, 4, 8), torch.randint(0, 3, (5, 4))
    cockpit = Cockpit(
        model, None, server=None, instruments=[BY_NAME["norm_test"](schedule=always)]
    )
    loss = F.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1))
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    assert cockpit.readings[0]["norm_test"] is None
    why = errors_of(cockpit)[0]["norm_test"]
    assert "samples on another axis than 0" in why and "batch_first" in why
    assert not cockpit.disabled


class SqueezedHead(nn.Module):
    """A model computing its loss from ``labels=`` after ``squeeze()``.

    A common binary-classification head; on one sample the squeeze also drops
    the batch axis and the loss raises ``ValueError`` (sizes differ). A scale
    owned by the model itself is served by the whole-model re-run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        logits = (self.lin(x) * self.scale).squeeze()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return {"loss": loss, "logits": logits}


def test_a_value_error_of_the_rerun_is_this_steps_reason(
    torch_threads: None,
) -> None:
    torch.manual_seed(0)
    model = SqueezedHead()
    cockpit = Cockpit(
        model, None, server=None, instruments=[BY_NAME["norm_test"](schedule=always)]
    )
    for step in range(2):
        x, y = torch.randn(4, 4), torch.randint(0, 2, (4,)).float()
        model.zero_grad()
        loss = model(x, labels=y)["loss"]
        with cockpit.step(step, loss=loss):
            loss.backward()
    cockpit.close()
    assert not cockpit.disabled, cockpit.disabled
    for step, errors in enumerate(errors_of(cockpit)):
        assert cockpit.readings[step]["norm_test"] is None
        assert "ValueError" in errors["norm_test"] or "size" in errors["norm_test"]


def test_detached_losses_on_a_partly_covered_model_say_what_alpha_needs(
    torch_threads: None,
) -> None:
    model, x, y = PARTIAL.make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(
        model, opt, server=None, instruments=[BY_NAME["alpha"](schedule=always)]
    )
    for step in range(3):
        opt.zero_grad()
        losses = F.cross_entropy(model(x), y, reduction="none")
        with cockpit.step(step, loss=losses.mean(), losses=losses.detach()):
            losses.mean().backward()
        opt.step()
    cockpit.close()
    assert not cockpit.disabled, cockpit.disabled
    reasons = [e.get("alpha", "") for e in errors_of(cockpit)]
    assert any("losses=" in r and "detached" in r for r in reasons), reasons


def test_loss_without_loss_reads_none_with_the_reason() -> None:
    model = nn.Linear(3, 2)
    cockpit = Cockpit(model, None, server=None, instruments=["loss"])
    with cockpit.step(0):
        model(torch.randn(4, 3)).sum().backward()
    cockpit.close()
    assert cockpit.readings[0]["loss"] is None
    assert "loss=" in errors_of(cockpit)[0]["loss"]
    assert not cockpit.disabled


class DictInput(nn.Module):
    """A model taking its batch as one dict (the probe cuts into it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        h = torch.tanh(self.lin(batch["x"]))  # [B, T, 4], T == B
        return self.head(h.mean(1))


def test_a_batch_in_a_dict_is_followed(torch_threads: None) -> None:
    torch.manual_seed(0)
    model = DictInput()
    x, y = torch.randn(4, 4, 4), torch.randint(0, 3, (4,))
    cockpit = Cockpit(
        model, None, server=None, instruments=[BY_NAME["norm_test"](schedule=always)]
    )
    loss = F.cross_entropy(model({"x": x}), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    per = []
    for i in range(4):
        model.zero_grad()
        F.cross_entropy(model({"x": x[i : i + 1]}), y[i : i + 1]).backward()
        per.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    g = torch.stack(per).double()
    mean = g.mean(0)
    want = (((g - mean) ** 2).sum() / 3 / (4 * mean @ mean)).sqrt()
    assert cockpit.readings[0]["norm_test"]["total"] == pytest.approx(
        float(want), rel=1e-4
    )
