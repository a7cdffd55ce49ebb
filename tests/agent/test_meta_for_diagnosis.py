"""The run metadata the diagnosis rules read: parameter shapes and initial norm."""

from __future__ import annotations

import torch
from torch import nn

from glasscockpit.agent.lifecycle.meta import model_meta


def test_parameter_shapes_and_norm_match_torch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # frozen: not the optimizer's
    meta = model_meta(model, None)
    assert meta["parameter_shapes"] == {
        "0.weight": [4, 3, 3, 3],
        "0.bias": [4],
        "2.weight": [2, 4],
    }
    trained = [p for p in model.parameters() if p.requires_grad]
    want = torch.cat([p.detach().flatten() for p in trained]).double().norm()
    assert abs(meta["parameter_norm"] - float(want)) <= 1e-6 * float(want)


def test_meta_tensors_give_no_norm() -> None:
    meta = model_meta(nn.Linear(3, 2, device="meta"), None)
    assert meta["parameter_norm"] == 0.0
    assert meta["parameter_shapes"] == {}
