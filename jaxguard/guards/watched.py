"""Metrics a guard watches, written ``"name:mode"``: the name and the direction it improves in."""

from __future__ import annotations

from collections.abc import Iterable

from jaxguard.guards.base import check_mode


def parse_watched(owner: str, key: str, specs: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``("r2:max", "pixel_error:min")`` as ``(("r2", "max"), ("pixel_error", "min"))``.

    Args:
      owner: The guard, for the error message.
      key: The argument or config key the specs came from, for the error message.
      specs: Strings ``"<metric>:<mode>"``, mode "min" (lower is better) or "max".

    Raises:
      ValueError: naming `key` and the spec, for a spec without exactly one ``:``, an empty
        name, a mode other than min/max, or a metric given twice.
    """
    if isinstance(specs, str):
        raise TypeError(
            f"{owner}: `{key}` must be a tuple of 'metric:mode' strings, got {specs!r}."
        )
    parsed: list[tuple[str, str]] = []
    for spec in specs:
        name, separator, mode = str(spec).partition(":")
        if not separator or not name.strip():
            raise ValueError(
                f"{owner}: `{key}` entry {spec!r} must read 'metric:min' or 'metric:max'."
            )
        parsed.append((name.strip(), check_mode(owner, f"{key} ({spec})", mode.strip())))
    names = [name for name, _ in parsed]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{owner}: `{key}` names {', '.join(repeated)} more than once.")
    return tuple(parsed)
