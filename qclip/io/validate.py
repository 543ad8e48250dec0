"""Validation of user-given configuration values: each check raises `ConfigError` (exit 2) naming the field and
the value. Configs call these from `__post_init__`, so a bad config fails when it is built, before any model or
data is loaded. Writes nothing."""

from __future__ import annotations

from typing import Any, Iterable

from qclip.quant.spec import MAX_SEED

from .errors import ConfigError

__all__ = ["PRECISIONS", "MAX_INT", "MAX_SEED", "check_seed", "shown", "check_int", "check_float", "check_str",
           "check_str_list", "check_choice", "check_spec"]

#: Weight/compute precisions every command accepts (`amp_bf16`: float32 weights under bfloat16 autocast).
PRECISIONS = ("fp32", "amp_bf16", "fp16", "bf16", "pure_fp16", "pure_bf16")


#: The largest count any flag or config field takes (2**31 - 1: torch's C int arguments overflow past it).
MAX_INT = 2**31 - 1
#: The most characters of a user's value an error line echoes (a huge value must not become a huge line).
MAX_SHOWN = 200


def shown(value: Any) -> str:
    """`repr(value)` cut to `MAX_SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int = MAX_INT,
              optional: bool = False) -> int | None:
    """`value` as an int in [`minimum`, `maximum`] (None allowed when `optional`); bools and floats are refused. The
    default maximum is `MAX_INT`: counts past it overflow torch's C int arguments (threads, sizes) after the work."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer{' or null' if optional else ''}, got {shown(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {shown(value)}")
    if value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {shown(value)}")
    return value


def check_seed(name: str, value: Any) -> int:
    """`value` as a seed: an integer in 0..`MAX_SEED` (every seed path accepts it: torch, numpy, Lightning)."""
    return check_int(name, value, minimum=0, maximum=MAX_SEED)


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """`value` as a finite float in [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number, got {shown(value)}")
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
        raise ConfigError(f"{name} must be a non-empty string{' or null' if optional else ''}, got {shown(value)}")
    return value


def check_str_list(name: str, value: Any) -> list[str]:
    """`value` as a list of non-empty strings; a bare string is refused (it would read as its letters)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of strings, got {shown(value)}")
    for item in value:
        check_str(f"an entry of {name}", item)
    return list(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """`value` as one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def check_spec(name: str, value: Any):
    """`value` parsed as a quantization / rank-truncation spec (`qclip.quant.spec.parse_spec`); a spec the parser
    refuses is `bad NAME 'VALUE': reason`. The one place a user's spec text becomes a spec or a user error."""
    from qclip.quant.spec import parse_spec

    try:
        return parse_spec(value)
    except ValueError as exc:
        raise ConfigError(f"bad {name} {shown(value)}: {exc}") from None
