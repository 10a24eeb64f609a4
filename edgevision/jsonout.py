"""JSON that is always valid JSON: NaN and infinities become null (``json`` writes bare NaN)."""

from __future__ import annotations

import json
import math


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj, **kwargs) -> str:
    """json.dumps with non-finite floats written as null (standard JSON has no NaN)."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)
