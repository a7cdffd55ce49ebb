"""The engine's one error type, importable by every engine module without cycles."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Per-sample statistics are not available for this model or step."""
