"""What every command shares: exit codes, the bad-input error, the one strict `--task` parser.

    0 success · 1 a failure while running · 2 bad input (nothing was started or changed) ·
    130 stopped by SIGINT · 143 stopped by SIGTERM
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class BadInput(ValueError):
    """A command-line value that is wrong before anything starts (exit 2)."""


def error(message: str, code: int = EXIT_BAD_INPUT) -> int:
    """Print `fleet: error: MESSAGE` on stderr and return `code` (bad input unless told otherwise)."""
    print(f"fleet: error: {message}", file=sys.stderr)
    return code


def bad_input(message: str) -> int:
    return error(message, EXIT_BAD_INPUT)


def parse_task(items: list[str]) -> dict | None:
    """``["goal=[0.6,0.1,0.4]"]`` -> ``{"goal": [0.6, 0.1, 0.4]}`` (values parsed as YAML); None when empty.

    Strict: every item is KEY=VALUE with a non-empty key, no key twice, a value that is valid YAML.
    """
    import yaml

    task: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"--task {item!r}: expected KEY=VALUE, e.g. --task goal=[0.6,0.1,0.4]")
        if key in task:
            raise BadInput(f"--task {key!r} given twice")
        try:
            task[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise BadInput(f"--task {item!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    return task or None
