"""fleet promote: the gate moves an alias only for a better candidate (or --force), and records why."""

import json

from mlflow.tracking import MlflowClient

from metafleet.cli import main


def promote(capsys, *args):
    code = main(["promote", "smoke", *args, "--episodes", "2", "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else None


def test_gate(store, capsys):
    client = MlflowClient(store, store)
    code, first = promote(capsys, "--version", "1", "--alias", "gate-test")
    assert code == 0 and first["promoted"] and first["reason"] == "@gate-test was unset"
    assert str(client.get_model_version_by_alias("smoke", "gate-test").version) == "1"

    code, second = promote(capsys, "--version", "2", "--alias", "gate-test")
    assert code == 0 and second["incumbent"] == "1"
    better = second["candidate_return"] > second["incumbent_return"]
    assert second["promoted"] == better
    holder = str(client.get_model_version_by_alias("smoke", "gate-test").version)
    assert holder == ("2" if better else "1")
    tags = client.get_model_version("smoke", "2").tags
    assert tags["promote_decision"] == ("promoted" if better else "rejected")
    assert float(tags["promote_incumbent_return"]) == round(second["incumbent_return"], 4)

    loser = "1" if holder == "2" else "2"
    code, forced = promote(capsys, "--version", loser, "--alias", "gate-test", "--force")
    assert code == 0 and forced["promoted"] and forced["reason"] == "forced"
    assert str(client.get_model_version_by_alias("smoke", "gate-test").version) == loser


def test_unknown_version_is_bad_input(store, capsys):
    assert main(["promote", "smoke", "--version", "99"]) == 2
    assert "models:/smoke/99 does not exist" in capsys.readouterr().err
