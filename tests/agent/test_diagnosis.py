"""Cockpit(on_diagnosis=...) in a real training loop: it fires and can stop it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent import Cockpit
from glasscockpit.diagnosis import Diagnosis, DiagnosisSettings


class Doomed(Exception):
    """What the user's callback raises to end a hopeless trial."""


def loop(
    cockpit: Cockpit, model: nn.Module, opt: torch.optim.Optimizer, steps: int
) -> int:
    """Train on Gaussian classes; returns the number of steps run."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    done = 0
    for step in range(steps):
        idx = torch.randint(0, 512, (16,), generator=gen)
        opt.zero_grad()
        losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
        loss = losses.mean()
        with cockpit.step(step, loss=loss, batch_size=16, losses=losses):
            loss.backward()
        opt.step()
        done += 1
    return done


def dead_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias.fill_(-10.0)  # every ReLU is dead for every input
    return model


def test_callback_fires_in_the_training_thread_and_stops_training():
    model = dead_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[Diagnosis] = []

    def stop(d: Diagnosis) -> None:
        seen.append(d)
        if d.severity != "info":
            raise Doomed(d.title)

    cockpit = Cockpit(model, opt, server=None, on_diagnosis=stop, budget=None)
    with pytest.raises(Doomed, match="Dead units"):
        loop(cockpit, model, opt, steps=200)
    cockpit.close()
    [d] = seen
    # grad_norm every step, a window of 5 readings: the 5th step (step 4) decides.
    assert (d.rule, d.detected_step, d.first_step) == ("dead_units", 4, 0)
    assert cockpit.diagnoses == seen
    # The rules run off the training thread; the callback comes with one of
    # the next frames the Cockpit sends, so training stops a few steps later.
    assert cockpit.readings and max(cockpit.readings) <= 12


def test_healthy_loop_gets_no_diagnosis_and_disabled_rules_stay_silent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[Diagnosis] = []
    cockpit = Cockpit(model, opt, server=None, on_diagnosis=calls.append, budget=None)
    assert loop(cockpit, model, opt, steps=60) == 60
    cockpit.close()
    assert calls == [] and cockpit.diagnoses == []

    model = dead_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    off = DiagnosisSettings.parse("dead_units")
    cockpit = Cockpit(model, opt, server=None, diagnosis=off, budget=None)
    loop(cockpit, model, opt, steps=20)
    cockpit.close()
    assert "dead_units" not in {d.rule for d in cockpit.diagnoses}


def test_the_environment_configures_the_agents_rules(monkeypatch):
    monkeypatch.setenv("GLASSCOCKPIT_DIAGNOSIS_DISABLE", "nonsense")
    model = dead_mlp()
    with pytest.raises(ValueError, match="Unknown diagnosis rule"):
        Cockpit(model, None, server=None)
