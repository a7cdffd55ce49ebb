"""Move all of a step's readings to the host in one transfer per device."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from glasscockpit.agent.instruments.base import Guarded, Leaf, Reading
from glasscockpit.protocol import Array, Value


def _transfer_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; elsewhere float64 keeps large histogram counts exact.
    return torch.float32 if device.type == "mps" else torch.float64


def to_host(readings: dict[str, Reading]) -> dict[str, Value]:
    """Replace every tensor leaf by a float (0-d) or an ``Array`` (n-d).

    All tensors on one device are flattened into one buffer and copied with a
    single ``.cpu()``, so a step costs one synchronisation per device.
    """
    leaves: list[Tensor] = []
    for reading in readings.values():
        items = reading.values() if isinstance(reading, dict) else [reading]
        for x in items:
            if isinstance(x, Guarded):
                leaves.extend((x.value, x.valid))
            elif isinstance(x, Tensor):
                leaves.append(x)

    host: dict[int, Any] = {}
    by_device: dict[torch.device, list[Tensor]] = {}
    for t in leaves:
        by_device.setdefault(t.device, []).append(t)
    for device, tensors in by_device.items():
        dtype = _transfer_dtype(device)
        flat = (
            torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors]).cpu().numpy()
        )
        offset = 0
        for t in tensors:
            n = t.numel()
            host[id(t)] = (flat[offset : offset + n], tuple(t.shape))
            offset += n

    def convert(x: Leaf) -> float | None | Array:
        if x is None:
            return None
        if isinstance(x, Guarded):
            valid, _ = host[id(x.valid)]
            if not valid.all():
                return None
            return convert(x.value)
        if isinstance(x, Tensor):
            values, shape = host[id(x)]
            if not shape:
                return float(values[0])
            return Array(values.dtype.str, shape, values.tobytes())
        return float(x) if not isinstance(x, bool) else float(x)

    out: dict[str, Value] = {}
    for key, reading in readings.items():
        if isinstance(reading, dict):
            out[key] = {k: convert(v) for k, v in reading.items()}
        else:
            out[key] = convert(reading)
    return out


def is_finite(value: Value) -> bool:
    """True when every number in a host-side reading is finite."""
    if value is None or isinstance(value, Array):
        return True
    if isinstance(value, dict):
        return all(is_finite(v) for v in value.values())
    return math.isfinite(value)
