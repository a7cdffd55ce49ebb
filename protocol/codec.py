"""msgpack codec for frames: ``encode(frame) -> bytes`` and ``decode(bytes) -> frame``.

Pure functions, no I/O. Arrays travel as a msgpack extension (type 1) holding
``[dtype, shape, raw little-endian bytes]``, so the server can wrap them with
``numpy.frombuffer`` without copying. Every decoded field is type-checked: a
frame either decodes into a valid dataclass or raises a ``ProtocolError``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack

from glasscockpit.protocol.errors import (
    FrameTooLarge,
    InvalidRunId,
    MalformedFrame,
    NotMsgpack,
    UnsupportedVersion,
)
from glasscockpit.protocol.frames import (
    PROTOCOL_VERSION,
    Ack,
    Array,
    Bye,
    Frame,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    Value,
)

ARRAY_EXT = 1
DEFAULT_MAX_SIZE = 8 * 2**20
MAX_NAME = 200
#: Matched with fullmatch: "$" would also match before a trailing newline.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
STATUSES = frozenset({"finished", "failed"})


def check_run_id(run: str) -> str:
    """Return ``run`` if it is a valid run id, else raise ``MalformedFrame``."""
    if not isinstance(run, str) or not RUN_ID.fullmatch(run) or ".." in run:
        shown = run[:40] + "…" if isinstance(run, str) and len(run) > 40 else run
        raise InvalidRunId(
            f"Invalid run id {shown!r}: expected 1-128 characters of letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, without '..'"
        )
    return run


def _default(obj: Any) -> Any:
    if isinstance(obj, Array):
        payload = msgpack.packb([obj.dtype, list(obj.shape), obj.data])
        return msgpack.ExtType(ARRAY_EXT, payload)
    raise TypeError(f"Cannot encode {type(obj).__name__}")


def _ext_hook(code: int, payload: bytes) -> Any:
    if code != ARRAY_EXT:
        raise MalformedFrame(f"Unknown msgpack extension type {code}")
    try:
        dtype, shape, data = msgpack.unpackb(payload, use_list=True)
        return Array(dtype, tuple(shape), data)
    except (ValueError, TypeError) as exc:
        raise MalformedFrame(f"Bad array payload: {exc}") from exc


def _panel_dict(panel: PanelSpec) -> dict[str, Any]:
    return {
        "title": panel.title,
        "y_label": panel.y_label,
        "log_y": panel.log_y,
        "group": panel.group,
        "help": panel.help,
        "ref_lines": list(panel.ref_lines),
        "band": None if panel.band is None else list(panel.band),
        "smooth": panel.smooth,
        "distribution": panel.distribution,
        "card": panel.card,
        "x_label": panel.x_label,
    }


def encode(frame: Frame | Ack) -> bytes:
    """Serialise one frame to msgpack bytes."""
    body: dict[str, Any]
    if isinstance(frame, Hello):
        body = {
            "t": "hello",
            "protocol": frame.protocol,
            "instruments": [
                {
                    "name": s.name,
                    "kind": s.kind.value,
                    "panel": _panel_dict(s.panel),
                    "schedule": s.schedule,
                }
                for s in frame.instruments
            ],
            "meta": frame.meta,
        }
    elif isinstance(frame, Readings):
        body = {
            "t": "readings",
            "step": frame.step,
            "wall_time": frame.wall_time,
            "values": frame.values,
            "errors": frame.errors,
        }
    elif isinstance(frame, Bye):
        body = {"t": "bye", "status": frame.status}
    elif isinstance(frame, Ack):
        body = {"t": "ack"}
    else:
        raise TypeError(f"Not a frame: {type(frame).__name__}")
    body["v"] = PROTOCOL_VERSION
    body["run"] = frame.run
    body["seq"] = frame.seq
    out: bytes = msgpack.packb(body, default=_default, use_bin_type=True)
    return out


def _get(body: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise MalformedFrame(f"Frame field {key!r} is missing")
    value = body[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise MalformedFrame(
            f"Frame field {key!r} must be {getattr(typ, '__name__', typ)}, "
            f"got {type(value).__name__}"
        )
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise MalformedFrame(f"{what} must be a string of 1-{MAX_NAME} characters")
    return value


def _number(value: Any, where: str) -> float | None | Array:
    if value is None or isinstance(value, Array):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedFrame(
            f"Reading {where} must be a number, array or null, "
            f"got {type(value).__name__}"
        )
    return float(value)


def _value(value: Any, name: str) -> Value:
    if isinstance(value, dict):
        return {
            _name(k, f"Key of {name!r}"): _number(v, f"{name}.{k}")
            for k, v in value.items()
        }
    return _number(value, repr(name))


def _floats(value: Any, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) > 64:
        raise MalformedFrame(f"{what} must be a list of at most 64 numbers")
    return tuple(_finite(v, what) for v in value)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedFrame(f"{what} must hold numbers, got {type(value).__name__}")
    if not math.isfinite(value):
        raise MalformedFrame(f"{what} must hold finite numbers, got {value}")
    return float(value)


def _panel(panel: dict[str, Any]) -> PanelSpec:
    """A PanelSpec; fields added after protocol 1 shipped are optional."""
    band_raw = panel.get("band")
    band: tuple[float, float] | None = None
    if band_raw is not None:
        values = _floats(band_raw, "Panel band")
        if len(values) != 2:
            raise MalformedFrame(f"Panel band must be [low, high], got {band_raw!r}")
        band = (values[0], values[1])
    optional = {"smooth": bool, "distribution": str, "card": str, "x_label": str}
    extra = {k: _get(panel, k, t) for k, t in optional.items() if k in panel}
    try:
        return PanelSpec(
            title=_name(_get(panel, "title", str), "Panel title"),
            y_label=_get(panel, "y_label", str)[:MAX_NAME],
            log_y=_get(panel, "log_y", bool),
            group=_get(panel, "group", str)[:MAX_NAME],
            help=_get(panel, "help", str)[:2000],
            ref_lines=_floats(panel.get("ref_lines", []), "Panel ref_lines"),
            band=band,
            smooth=extra.get("smooth", False),
            distribution=extra.get("distribution", ""),
            card=extra.get("card", "")[:MAX_NAME],
            x_label=extra.get("x_label", "")[:MAX_NAME],
        )
    except ValueError as exc:
        raise MalformedFrame(f"Bad panel description: {exc}") from exc


def _spec(raw: Any) -> InstrumentSpec:
    if not isinstance(raw, dict):
        raise MalformedFrame("Each instrument description must be a map")
    panel = _get(raw, "panel", dict)
    try:
        kind = Kind(_get(raw, "kind", str))
    except ValueError as exc:
        raise MalformedFrame(f"Unknown instrument kind: {exc}") from exc
    return InstrumentSpec(
        name=_name(_get(raw, "name", str), "Instrument name"),
        kind=kind,
        panel=_panel(panel),
        schedule=str(raw.get("schedule", ""))[:MAX_NAME],
    )


def decode(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Frame | Ack:
    """Parse and validate one frame; raise a ``ProtocolError`` on bad input."""
    if len(data) > max_size:
        raise FrameTooLarge(
            f"Frame of {len(data)} bytes exceeds the limit of {max_size}"
        )
    try:
        body = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True)
    except MalformedFrame:
        raise
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise NotMsgpack(f"Not a msgpack frame: {type(exc).__name__}: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedFrame(f"Frame must be a map, got {type(body).__name__}")
    version = _get(body, "v", int)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"Protocol version {version} is not supported; "
            f"this side speaks {PROTOCOL_VERSION}"
        )
    kind = _get(body, "t", str)
    run = check_run_id(_get(body, "run", str))
    seq = _get(body, "seq", int)
    if seq < 0:
        raise MalformedFrame(f"Sequence number must be >= 0, got {seq}")
    if kind == "hello":
        specs = tuple(_spec(s) for s in _get(body, "instruments", list))
        if len({s.name for s in specs}) != len(specs):
            raise MalformedFrame("Instrument names in the hello frame must be unique")
        meta = _get(body, "meta", dict)
        return Hello(run=run, seq=seq, instruments=specs, meta=meta, protocol=version)
    if kind == "readings":
        step = _get(body, "step", int)
        values = _get(body, "values", dict)
        errors = _get(body, "errors", dict)
        return Readings(
            run=run,
            seq=seq,
            step=step,
            wall_time=float(_get(body, "wall_time", (int, float))),
            values={
                _name(k, "Instrument name"): _value(v, k) for k, v in values.items()
            },
            errors={
                _name(k, "Instrument name"): str(v)[:2000] for k, v in errors.items()
            },
        )
    if kind == "bye":
        status = _get(body, "status", str)
        if status not in STATUSES:
            raise MalformedFrame(
                f"Bye status must be one of {sorted(STATUSES)}, got {status!r}"
            )
        return Bye(run=run, seq=seq, status=status)
    if kind == "ack":
        return Ack(run=run, seq=seq)
    raise MalformedFrame(
        f"Unknown frame type {kind!r}; expected hello, readings, bye or ack"
    )
