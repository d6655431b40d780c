"""Type-strict comparison of JSON values (``True != 1``, ``-0.0 != 0.0``, key order counts)."""

from __future__ import annotations

import math
from typing import Any


def assert_same_json(actual: Any, expected: Any, path: str = "$") -> None:
    """Assert two parsed JSON values are identical in type, value and dict key order.

    ``==`` alone would accept ``1 == True == 1.0`` and ``0.0 == -0.0``; a serializer that
    turned booleans into integers or lost the sign of zero would pass it.
    """
    assert type(actual) is type(expected), (
        f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    )
    if isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(actual), f"{path}: {actual!r} is not NaN"
        else:
            assert actual == expected, f"{path}: {actual!r} != {expected!r}"
            assert math.copysign(1.0, actual) == math.copysign(1.0, expected), f"{path}: sign"
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for key, value in expected.items():
            assert_same_json(actual[key], value, f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_json(a, e, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
