"""A tiny name -> factory registry used for datasets and models.

Later pieces (image data sets, graph data sets, extreme label spaces) plug into the harness by
registering a factory under a new name; the CLI lists ``Registry.names()`` as the valid choices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Maps names to factories, with errors that list the valid choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            self._help[name] = help or (fn.__doc__ or "").strip().split("\n")[0]
            return fn

        return decorator

    def get(self, name: str) -> F:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def merge_options(
    field: str,
    owner: str,
    given: Any,
    defaults: dict[str, Any],
    error: type[Exception] = ValueError,
) -> dict[str, Any]:
    """``defaults`` updated with ``given`` (e.g. ``cfg.dataset_options``), rejecting unknown keys.

    ``field`` names the config field (``"dataset_options"``) and ``owner`` what reads it
    (``"dataset 'digits'"``); the error lists the valid keys.
    """
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise TypeError(f"{field} must be a mapping; found {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise error(
            f"unknown {field} {', '.join(map(repr, unknown))} for {owner}; valid keys: "
            f"{', '.join(sorted(defaults))}"
        )
    out = dict(defaults)
    out.update(given)
    return out
