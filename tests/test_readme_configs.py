"""The README's configs table names every shipped config, names nothing else, and says the learner each runs."""

import re
from pathlib import Path

from learner.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# how the table's "what it trains" cell starts, per learner.algorithm
OPENING = {"belief": "task inference (belief)", "maml": "MAML", "rma": "RMA", "pearl": "PEARL", "mtppo": "task-",
           "reptile": "the other meta-learners", "metasgd": "the other meta-learners", "rl2": "the other meta-learners",
           "single_task": "one network per training goal"}


def table_rows() -> list[tuple[list[str], str]]:
    section = (ROOT / "README.md").read_text().split("## Configs", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([^`]+\.yaml)`", cells[0]), cells[1]))
    return rows


def test_the_configs_table_names_exactly_the_shipped_configs():
    named = {name for names, _ in table_rows() for name in names if "/" not in name}
    shipped = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert named == shipped, f"missing from README: {sorted(shipped - named)}; not shipped: {sorted(named - shipped)}"


def test_each_single_learner_row_names_the_learner_its_configs_run():
    for names, what in table_rows():
        configs = [load_config(ROOT / "configs" / n) for n in names if "/" not in n]
        learners = {c.learner.algorithm for c in configs}
        if len(learners) == 1 and "mixed" not in what:
            algorithm = learners.pop()
            if algorithm in OPENING:
                assert what.startswith(OPENING[algorithm]) or what.lower().startswith(OPENING[algorithm].lower()), (
                    names, algorithm, what)
