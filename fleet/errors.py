"""Errors raised by the fleet layer."""

from __future__ import annotations

from collections.abc import Iterable


def unknown_name_message(kind: str, name: object, known: Iterable[str]) -> str:
    """Build the message for a failed lookup, e.g. ``unknown task family 'x'; known: reach``."""
    known_list = ", ".join(sorted(known)) or "(none)"
    return f"unknown {kind} {name!r}; known: {known_list}"


class UnknownNameError(ValueError):
    """A lookup by name (robot model, task family, ...) found nothing.

    It subclasses ``ValueError`` so config validation can catch one type. The constructor keeps
    ``ValueError``'s single-message signature so the exception pickles (Ray ships errors between
    processes); use :meth:`build` to get the standard message.

    Usage::

        raise UnknownNameError.build("task family", name, FAMILIES)
    """

    @classmethod
    def build(cls, kind: str, name: object, known: Iterable[str]) -> UnknownNameError:
        """Return an error whose message names ``name`` and lists every ``known`` name."""
        return cls(unknown_name_message(kind, name, known))
