"""Move all of a step's readings to the host in one transfer per device.

On CUDA the transfer is non-blocking (pinned memory and an event), so the
training thread never synchronises with the GPU for monitoring.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from glasscockpit.agent.instruments.base import Guarded, Leaf, Reading
from glasscockpit.protocol import Array, Readings, Value

log = logging.getLogger("glasscockpit.agent")


def _transfer_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; elsewhere float64 keeps large histogram counts exact.
    return torch.float32 if device.type == "mps" else torch.float64


#: Cleared (once, with a warning) if pinned host memory cannot be allocated.
_pinned_ok = [True]


def _by_dtype(scalars: list[Tensor]) -> list[Tensor]:
    """``scalars`` reordered so that each dtype's tensors are contiguous."""
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in scalars:
        groups.setdefault(t.dtype, []).append(t)
    return [t for group in groups.values() for t in group]


def _stack_scalars(scalars: list[Tensor], dtype: torch.dtype) -> Tensor:
    """One vector of 0-d tensors in ``dtype``; one stack per run of equal dtypes.

    ``_by_dtype`` order makes that one stack per dtype (not one cast per value).
    """
    runs: list[list[Tensor]] = []
    for t in scalars:
        if runs and runs[-1][0].dtype == t.dtype:
            runs[-1].append(t)
        else:
            runs.append([t])
    with torch.no_grad():  # no graph: nothing to detach one by one
        parts = [torch.stack(run).to(dtype) for run in runs]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _start_cuda_copy(flat: Tensor) -> tuple[Tensor, Any]:
    """Queue a non-blocking copy of ``flat`` into pinned memory; (buffer, event)."""
    try:
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
    except RuntimeError as exc:
        # Pinned memory can be limited (containers, ulimit -l): fall back to one
        # synchronous copy per step rather than losing the readings.
        _pinned_ok[0] = False
        log.warning(
            "glasscockpit: pinned host memory is unavailable (%s); readings are "
            "copied synchronously",
            exc,
        )
        return flat.cpu(), None
    host.copy_(flat, non_blocking=True)
    # A blocking-sync event lets the waiting thread sleep instead of spinning.
    event = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
    event.record(torch.cuda.current_stream(flat.device))
    # Freeing ``flat`` after this is safe: the caching allocator hands its block
    # only to work queued after the copy on the same stream.
    return host, event


@dataclass(frozen=True)
class _Slot:
    """Where one tensor's values sit in its device's host buffer."""

    chunk: int
    offset: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _GuardedSlot:
    """A ``Guarded`` reading: its value, and the flag saying whether it is defined."""

    value: _Slot
    valid: _Slot


_Leaf = _Slot | _GuardedSlot | float | None


class HostCopy:
    """A step's readings on their way to the host: one transfer per device.

    On CUDA the transfer is a non-blocking copy into pinned memory followed by a
    recorded event, so the training thread never waits for the GPU; ``values()``
    waits on the event and must be called off the training thread. On CPU the
    readings are already host memory and ``values()`` does not wait. Other
    devices (MPS, ...) use one synchronous ``.cpu()``. No device tensor is kept
    once the copy is queued.
    """

    def __init__(self, readings: dict[str, Reading]) -> None:
        by_device: dict[torch.device, list[Tensor]] = {}
        for reading in readings.values():
            items = reading.values() if isinstance(reading, dict) else [reading]
            for x in items:
                if isinstance(x, Guarded):
                    by_device.setdefault(x.value.device, []).append(x.value)
                    by_device.setdefault(x.valid.device, []).append(x.valid)
                elif isinstance(x, Tensor):
                    by_device.setdefault(x.device, []).append(x)
        slots: dict[int, _Slot] = {}
        # Per device: the host buffer and the CUDA event (None when ready).
        self._chunks: list[tuple[Tensor, Any]] = []
        for device, tensors in by_device.items():
            dtype = _transfer_dtype(device)
            # Scalars (most readings) in one stack: two kernels, not three each.
            scalars = _by_dtype([t for t in tensors if t.dim() == 0])
            arrays = [t for t in tensors if t.dim() != 0]
            offset = 0
            for t in (*scalars, *arrays):
                slots[id(t)] = _Slot(len(self._chunks), offset, tuple(t.shape))
                offset += t.numel()
            parts = [t.detach().reshape(-1).to(dtype) for t in arrays]
            if scalars:
                parts.insert(0, _stack_scalars(scalars, dtype))
            flat = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
            if flat.is_cuda and _pinned_ok[0]:
                self._chunks.append(_start_cuda_copy(flat))
            else:
                self._chunks.append((flat.cpu(), None))

        def leaf(x: Leaf) -> _Leaf:
            if isinstance(x, Guarded):
                return _GuardedSlot(slots[id(x.value)], slots[id(x.valid)])
            if isinstance(x, Tensor):
                return slots[id(x)]
            return None if x is None else float(x)

        self._layout: dict[str, _Leaf | dict[str, _Leaf]] = {
            key: (
                {k: leaf(v) for k, v in reading.items()}
                if isinstance(reading, dict)
                else leaf(reading)
            )
            for key, reading in readings.items()
        }
        self._values: dict[str, Value] | None = None
        # The packer thread and the agent's diagnosis may both resolve a frame.
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """True when ``values()`` will not wait for the device."""
        return self._values is not None or all(
            e is None or e.query() for _, e in self._chunks
        )

    @property
    def on_device(self) -> bool:
        """True while a CUDA copy may still be in flight."""
        return self._values is None and any(e is not None for _, e in self._chunks)

    def values(self) -> dict[str, Value]:
        """The host readings: floats for 0-d tensors, ``Array`` for n-d ones."""
        with self._lock:
            return self._values_locked()

    def _values_locked(self) -> dict[str, Value]:
        if self._values is not None:
            return self._values
        flats = []
        for buffer, event in self._chunks:
            if event is not None and not event.query():
                event.synchronize()
            flats.append(buffer.numpy())

        out: dict[str, Value] = {}
        for key, item in self._layout.items():
            if isinstance(item, dict):
                out[key] = {k: _convert(v, flats) for k, v in item.items()}
            else:
                out[key] = _convert(item, flats)
        self._values = out
        self._chunks = []  # the pinned buffers go back to the allocator
        return out


def _convert(x: _Leaf, flats: list[Any]) -> float | None | Array:
    """A leaf's host value, read from the step's host buffers.

    Module-level: a recursive closure would be a reference cycle per step.
    """
    if isinstance(x, _GuardedSlot):
        n = math.prod(x.valid.shape)
        valid = flats[x.valid.chunk][x.valid.offset : x.valid.offset + n]
        return _convert(x.value, flats) if bool(valid.all()) else None
    if not isinstance(x, _Slot):
        return x
    n = math.prod(x.shape)
    values = flats[x.chunk][x.offset : x.offset + n]
    if not x.shape:
        return float(values[0])
    return Array(values.dtype.str, x.shape, values.tobytes())


@dataclass
class DeferredReadings:
    """A ``Readings`` frame whose values are still being copied from the GPU.

    The transport's packer thread calls ``resolve()``; the training thread only
    creates it.
    """

    run: str
    seq: int
    step: int
    wall_time: float
    copy: HostCopy
    errors: dict[str, str] = field(default_factory=dict)

    def resolve(self) -> Readings:
        """Wait for the copy and build the frame."""
        return Readings(
            self.run,
            self.seq,
            self.step,
            self.wall_time,
            self.copy.values(),
            self.errors,
        )


def pack_readings(
    run: str,
    seq: int,
    step: int,
    wall_time: float,
    results: dict[str, Reading],
    errors: dict[str, str],
) -> DeferredReadings:
    """One step's frame, deferred: the training thread only gathers the tensors.

    The conversion to host values (and, on CUDA, the wait for the copy) happens
    where the frame is resolved: the packer thread, or ``cockpit.readings``.
    """
    return DeferredReadings(run, seq, step, wall_time, HostCopy(results), errors)


def is_finite(value: Value) -> bool:
    """True when every number in a host-side reading is finite."""
    if value is None or isinstance(value, Array):
        return True
    if isinstance(value, dict):
        return all(is_finite(v) for v in value.values())
    return math.isfinite(value)
