"""`.ci/readme_commands.py`: CI runs the README's two commands exactly as written, and refuses to guess."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", REPO_ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_holds_the_two_commands_ci_runs(readme_commands):
    install, test = readme_commands.two_commands((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert install.startswith('pip install torch==2.13.0 -e ".[dev]" && fleet train configs/')
    assert test == 'pip install torch==2.13.0 -e ".[dev]" && python -m pytest'


def _readme(block: str) -> str:
    return f"# x\n\n## Two commands\n\nIntro.\n\n```bash\n{block}\n```\n\n## Next\n\n```bash\necho later\n```\n"


def test_comments_and_blank_lines_are_not_commands(readme_commands):
    assert readme_commands.two_commands(_readme("# one\necho 1\n\n  # two\necho 2")) == ["echo 1", "echo 2"]


@pytest.mark.parametrize(("text", "reason"), [
    (_readme("echo 1\necho 2\necho 3"), "exactly 2 command lines .* found 3"),
    (_readme("echo 1"), "exactly 2 command lines .* found 1"),
    ("# x\n\n## Two commands\n\nno block\n\n## Next\n\n```bash\necho 1\necho 2\n```\n", "no complete ```bash block"),
    ("# x\n\n## Quick start\n", "no '## Two commands' heading"),
])
def test_anything_but_exactly_two_commands_fails(readme_commands, text, reason):
    with pytest.raises(readme_commands.ReadmeError, match=reason):
        readme_commands.two_commands(text)
