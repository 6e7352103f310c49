"""Argument checks shared by the config dataclasses: one message shape everywhere.

Every check raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for a value out
of range, naming the argument and what is accepted. NumPy integer and floating scalars (what a
user's sweep loop produces) are accepted like Python ``int`` and ``float``; ``bool`` is not a
number here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

__all__ = ["is_int", "is_real", "check_int", "check_float", "check_fraction", "check_choice"]


def is_int(value) -> bool:
    """True for Python and NumPy integers (``bool`` excluded).

    Example:
        >>> import numpy as np
        >>> is_int(np.int64(4)), is_int(True), is_int(4.0)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """True for Python/NumPy integers and floats (``bool`` excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int, checked to lie in ``[low, high]`` (``None``: unbounded)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            accepted = f">= {low}"
        elif low is None:
            accepted = f"<= {high}"
        else:
            accepted = f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {accepted}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a finite Python float in the interval ``low..high`` (open or closed ends)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if not math.isfinite(value) or below or above:
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        raise ValueError(f"{name} must be a finite number in {lo}{low}, {high}{hi}, got {value}")
    return value


def check_fraction(name: str, value, *, open_low: bool = False) -> float:
    """``value`` as a float in ``[0, 1]`` (``(0, 1]`` with ``open_low``)."""
    return check_float(name, value, low=0.0, high=1.0, open_low=open_low)


def check_choice(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value
