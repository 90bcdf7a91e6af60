"""Print the README's "Two commands", one per line, so CI runs exactly what a reader runs.

Usage: `python .ci/readme_commands.py [README.md]`. Reads the first ```bash block under the
"## Two commands" heading, drops comments and blank lines, and fails (exit 1, a message naming what
is wrong) unless exactly two command lines remain. Standard library only: it runs before any install.
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADING = "## Two commands"
EXPECTED = 2


class ReadmeError(ValueError):
    """The README has no "Two commands" block, or the block does not hold exactly two commands."""


def two_commands(text: str) -> list[str]:
    """The command lines of the first ```bash block under `HEADING` (before the next `## ` heading)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HEADING)
    except StopIteration:
        raise ReadmeError(f"no {HEADING!r} heading in the README") from None
    section = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        section.append(line)
    try:
        fence = next(i for i, line in enumerate(section) if line.strip() in ("```bash", "```sh"))
        end = next(i for i in range(fence + 1, len(section)) if section[i].strip() == "```")
    except StopIteration:
        raise ReadmeError(f"no complete ```bash block under {HEADING!r}") from None
    commands = [line.strip() for line in section[fence + 1:end] if line.strip() and not line.strip().startswith("#")]
    if len(commands) != EXPECTED:
        raise ReadmeError(f"expected exactly {EXPECTED} command lines under {HEADING!r}, found {len(commands)}: "
                          f"{commands}")
    return commands


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "README.md")
    try:
        print("\n".join(two_commands(path.read_text(encoding="utf-8"))))
    except (OSError, ReadmeError) as exc:
        print(f"readme_commands: {path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
