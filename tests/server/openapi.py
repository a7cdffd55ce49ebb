"""A small schemathesis-like checker: requests generated from /openapi.json.

``operations(spec)`` lists every documented operation; ``requests(spec, op, seeds)``
is a hypothesis strategy of (method, url path, query) built from the operation's
parameter schemas (valid and invalid values both); ``validate`` checks a JSON body
against the documented response schema (the subset of JSON Schema that pydantic
emits: $ref, type, properties, required, additionalProperties, items, anyOf, enum,
const).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


@dataclass(frozen=True)
class Operation:
    """One documented method on one path."""

    method: str
    path: str
    parameters: tuple[dict[str, Any], ...]
    responses: dict[str, Any]


def operations(spec: dict[str, Any]) -> list[Operation]:
    """Every operation of the spec."""
    return [
        Operation(
            method.upper(), path, tuple(op.get("parameters", ())), op["responses"]
        )
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def validate(
    spec: dict[str, Any], schema: dict[str, Any], value: Any, at: str = "$"
) -> None:
    """Raise AssertionError naming the first place where ``value`` breaks ``schema``."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(spec, option, value, at)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{at}: matches no anyOf option: {errors}")
    if "const" in schema:
        assert value == schema["const"], f"{at}: {value!r} != const {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{at}: {value!r} not in {schema['enum']}"
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        ok = any(
            isinstance(value, TYPES[k])
            and not (k in ("integer", "number") and isinstance(value, bool))
            for k in kinds
        )
        assert ok, f"{at}: {type(value).__name__} is not {kinds}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            assert name in value, f"{at}: missing required {name!r}"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                validate(spec, props[name], item, f"{at}.{name}")
            elif isinstance(extra, dict):
                validate(spec, extra, item, f"{at}.{name}")
            else:
                assert extra is not False, f"{at}: unexpected property {name!r}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(spec, schema["items"], item, f"{at}[{i}]")


#: Path-like and hostile identifiers to try in path parameters.
HOSTILE = ["..", "../../etc/passwd", "a/b", "%2e%2e", "x" * 300, "nul\x00", "é", " "]


def _param_values(
    spec: dict[str, Any], param: dict[str, Any], seeds: list[str]
) -> st.SearchStrategy[Any]:
    schema = _resolve(spec, param.get("schema", {}))
    options = [_resolve(spec, s) for s in schema.get("anyOf", [schema])]
    strategies: list[st.SearchStrategy[Any]] = []
    for option in options:
        kind = option.get("type")
        if kind == "integer":
            lo = option.get("minimum", option.get("exclusiveMinimum", -(10**6)))
            hi = option.get("maximum", option.get("exclusiveMaximum", 10**6))
            strategies.append(st.integers(lo - 3, hi + 3))  # just outside the range too
            strategies.append(st.integers(lo, hi))
        elif kind == "string":
            strategies.append(
                st.sampled_from(seeds + HOSTILE) if seeds else st.text(min_size=1)
            )
            strategies.append(st.text(min_size=1, max_size=20))
    strategies.append(st.sampled_from(["", "abc", "1.5", "-1", "NaN"]))  # wrong types
    return st.one_of(strategies)


@st.composite
def requests(
    draw: st.DrawFn, spec: dict[str, Any], op: Operation, seeds: dict[str, list[str]]
) -> tuple[str, str, dict[str, str]]:
    """(method, path, query) for one operation; ``seeds`` are known-good values by
    parameter name (stored run ids, instrument names) mixed with generated ones."""
    path = op.path
    query: dict[str, str] = {}
    for param in op.parameters:
        name = param["name"]
        if param["in"] == "path":
            value = draw(_param_values(spec, param, seeds.get(name, [])))
            text = str(value) or "x"  # an empty segment would hit another route
            segment = quote(text, safe="")
            if segment in (".", ".."):  # clients would resolve these dot segments
                segment = segment.replace(".", "%2E")
            path = path.replace("{" + name + "}", segment)
        elif param["in"] == "query" and (param.get("required") or draw(st.booleans())):
            query[name] = str(draw(_param_values(spec, param, seeds.get(name, []))))
    return op.method, path, query
