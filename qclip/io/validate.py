"""Validation of user-given configuration values: each check raises `ConfigError` (exit 2) naming the field and
the value. Configs call these from `__post_init__`, so a bad config fails when it is built, before any model or
data is loaded. Writes nothing."""

from __future__ import annotations

from typing import Any, Iterable

from .errors import ConfigError

__all__ = ["PRECISIONS", "check_int", "check_float", "check_str", "check_str_list", "check_choice", "check_spec"]

#: Weight/compute precisions every command accepts (`amp_bf16`: float32 weights under bfloat16 autocast).
PRECISIONS = ("fp32", "amp_bf16", "fp16", "bf16", "pure_fp16", "pure_bf16")


def check_int(name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """`value` as an int >= `minimum` (None allowed when `optional`); bools and floats are refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer{' or null' if optional else ''}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """`value` as a finite float in [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")
    return float(value)


def check_str(name: str, value: Any, *, optional: bool = False) -> str | None:
    """`value` as a non-empty string (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string{' or null' if optional else ''}, got {value!r}")
    return value


def check_str_list(name: str, value: Any) -> list[str]:
    """`value` as a list of non-empty strings; a bare string is refused (it would read as its letters)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    for item in value:
        check_str(f"an entry of {name}", item)
    return list(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """`value` as one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_spec(name: str, value: Any):
    """`value` parsed as a quantization / rank-truncation spec (`qclip.quant.spec.parse_spec`); a spec the parser
    refuses is `bad NAME 'VALUE': reason`. The one place a user's spec text becomes a spec or a user error."""
    from qclip.quant.spec import parse_spec

    try:
        return parse_spec(value)
    except ValueError as exc:
        raise ConfigError(f"bad {name} {value!r}: {exc}") from None
