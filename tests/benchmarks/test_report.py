"""benchmarks/report.py: tables between markers come from results/*.json; --check catches hand edits."""

import json
import sys

import pytest

from tests.fakes import load_benchmark

PROVENANCE = {"command": "python benchmarks/envs.py --seconds 1", "commit": "abc1234-dirty",
              "date": "2026-01-01T00:00:00+00:00", "load_average_start": [3.5, 2.0, 1.0],
              "load_average_end": [4.25, 2.0, 1.0],
              "machine": {"cpu_count": 2, "usable_cpus": 2, "cpu_model": "Test CPU", "platform": "Linux",
                          "python": "3.11.7", "torch": "2.13.0", "ray": "2.60.0", "cuda_device": None}}
ENVS = {"seconds": 1.0, "repeats": 3, "load_average": [3.5, 4.25], "provenance": PROVENANCE,
        "rows": [{"family": "reach", "robot": "kuka_iiwa", "kind": "arm", "substeps": 4, "env_steps_per_s": 1965.4,
                  "unguarded_steps_per_s": 2158.0, "raw_steps_per_s": 32543.0, "guard_trips": 0,
                  "ratio": 1965.4 / 32543.0, "physics_ratio": 4 * 1965.4 / 32543.0}]}
DOC = "# Results\n\nHand-written prose.\n\n<!-- report:envs -->\nstale\n<!-- /report:envs -->\n\nMore prose.\n"


@pytest.fixture(scope="module")
def report():
    module = load_benchmark("report")
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "envs.json").write_text(json.dumps(ENVS))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text(DOC)
    return tmp_path


def run(report, root, *args):
    return report.main(["--root", str(root), *args, "docs/results.md"])


def test_regenerates_only_between_markers_with_a_source_line(report, root):
    assert run(report, root, "--check") == 1  # "stale" is not what the JSON gives
    assert run(report, root) == 0
    text = (root / "docs" / "results.md").read_text()
    assert text.startswith("# Results\n\nHand-written prose.\n\n<!-- report:envs -->\n")
    assert text.endswith("<!-- /report:envs -->\n\nMore prose.\n")
    assert "| reach | kuka_iiwa | 4 | 1,965 | 2,158 | 32,543 | 0.06 | 0.24 |" in text
    assert ("Source: `results/envs.json` — `python benchmarks/envs.py --seconds 1`, commit `abc1234-dirty`" in text
            and "2 cores (Test CPU)" in text and "load average 3.50 at start, 4.25 at end" in text)
    assert run(report, root, "--check") == 0


def test_check_fails_with_a_diff_when_a_table_is_edited_by_hand(report, root, capsys):
    assert run(report, root) == 0
    doc = root / "docs" / "results.md"
    synced = doc.read_text()
    doc.write_text(synced.replace("| 1,965 |", "| 2,500 |"))
    capsys.readouterr()
    assert run(report, root, "--check") == 1
    diff = capsys.readouterr().out
    assert "-| reach | kuka_iiwa | 4 | 2,500 |" in diff and "+| reach | kuka_iiwa | 4 | 1,965 |" in diff
    assert doc.read_text() == synced.replace("| 1,965 |", "| 2,500 |")  # --check writes nothing
    doc.write_text(synced.replace("More prose.", "Prose edited by hand."))  # outside the markers: allowed
    assert run(report, root, "--check") == 0


def test_a_suffixed_name_reads_its_own_file_with_the_family_renderer(report, root):
    rows = [{**ENVS["rows"][0], "action_mode": "ee"}]  # newer envs.py files name the action mode
    (root / "results" / "envs-quiet.json").write_text(json.dumps({**ENVS, "repeats": 7, "rows": rows}))
    (root / "docs" / "results.md").write_text(DOC.replace("report:envs", "report:envs-quiet"))
    assert run(report, root) == 0
    text = (root / "docs" / "results.md").read_text()
    assert "1 s x 7 per measurement" in text and "Source: `results/envs-quiet.json`" in text
    assert "| reach | kuka_iiwa | ee | 4 | 1,965 |" in text


def test_check_fails_when_the_json_changes(report, root):
    assert run(report, root) == 0
    (root / "results" / "envs.json").write_text(json.dumps({**ENVS, "repeats": 5}))
    assert run(report, root, "--check") == 1


def test_unknown_table_missing_json_and_missing_provenance_are_named(report, root, capsys):
    doc = root / "docs" / "results.md"
    doc.write_text(DOC.replace("report:envs", "report:nonsense"))
    assert run(report, root, "--check") == 2
    assert "unknown table 'nonsense'" in capsys.readouterr().err
    doc.write_text(DOC.replace("report:envs", "report:soak"))
    assert run(report, root, "--check") == 2
    assert "results/soak.json is missing" in capsys.readouterr().err
    doc.write_text(DOC)
    (root / "results" / "envs.json").write_text(json.dumps({k: v for k, v in ENVS.items() if k != "provenance"}))
    assert run(report, root, "--check") == 2
    assert "results/envs.json: no `provenance` block" in capsys.readouterr().err


def test_committed_docs_match_the_committed_results(report, capsys):
    """What CI runs: every generated table in the repository's docs agrees with results/."""
    assert report.main(["--check"]) == 0, capsys.readouterr().out[-3000:]
