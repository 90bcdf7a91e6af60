"""fleet promote: the gate moves an alias only for a better candidate (or --force), and records why."""

import json

import pytest
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


# ---- the gate on controlled figures ------------------------------------------------------------------
# The tests above derive "better" from the figures the code reports, so a score that ignored the model
# would pass them. Here the evaluation is replaced by chosen figures per version: the gate must act on them.
class ChosenFigures:
    """Stands in for `deploy.promote.evaluate_model`: version -> return after adaptation. The return
    before adaptation (step 0) is the opposite, so a gate that compared unadapted returns would fail."""

    def __init__(self, returns: dict[str, float]):
        self.returns, self.calls = returns, []

    def __call__(self, uri, split, steps, episodes, num_tasks, *args, **kwargs):
        self.calls.append((uri, split, tuple(steps), episodes, num_tasks))
        value = self.returns[uri.rsplit("/", 1)[1]]
        figures = {k: {"return_mean": value if k else -value} for k in steps}
        return type("Evaluation", (), {"summary": lambda self: figures})()


def gate(store, monkeypatch, capsys, alias, candidate, returns, *extra):
    """Set @alias to the other version, run `fleet promote` on chosen figures; the JSON decision."""
    client = MlflowClient(store, store)
    incumbent = "1" if candidate == "2" else "2"
    client.set_registered_model_alias("smoke", alias, incumbent)
    figures = ChosenFigures(returns)
    monkeypatch.setattr("deploy.promote.evaluate_model", figures)
    code, decision = promote(capsys, "--version", candidate, "--alias", alias, *extra)
    assert code == 0
    assert {call[0] for call in figures.calls} == {f"models:/smoke/{candidate}", f"models:/smoke/{incumbent}"}
    assert len({call[1:] for call in figures.calls}) == 1 and figures.calls[0][1] == "test"  # one held-out protocol
    return client, incumbent, decision


GATE_CASES = {  # candidate return, incumbent return -> promoted?  (a tie keeps the incumbent: "better" is strict)
    "better": (5.0, 3.0, True), "worse": (3.0, 5.0, False), "equal": (4.0, 4.0, False),
    "better-negative": (-2.5, -7.0, True), "worse-negative": (-7.0, -2.5, False)}


@pytest.mark.parametrize("candidate", ["1", "2"])
@pytest.mark.parametrize("case", list(GATE_CASES))
def test_gate_acts_on_the_figures(store, monkeypatch, capsys, case, candidate):
    cand, inc, promoted = GATE_CASES[case]
    alias = f"fig-{case}-{candidate}"
    client, incumbent, decision = gate(store, monkeypatch, capsys, alias, candidate, {candidate: cand, "1" if
                                       candidate == "2" else "2": inc})
    assert decision["candidate_return"] == cand and decision["incumbent_return"] == inc
    assert decision["promoted"] is promoted and decision["incumbent"] == incumbent
    holder = str(client.get_model_version_by_alias("smoke", alias).version)
    assert holder == (candidate if promoted else incumbent)
    sign = ">" if promoted else "<="
    assert decision["reason"] == f"candidate {cand:.3f} {sign} incumbent {inc:.3f}"
    tags = client.get_model_version("smoke", candidate).tags
    assert tags["promote_decision"] == ("promoted" if promoted else "rejected") and tags["promote_alias"] == alias
    assert (float(tags["promote_candidate_return"]), float(tags["promote_incumbent_return"])) == (cand, inc)


def test_rejection_says_why_and_force_overrides(store, monkeypatch, capsys):
    client = MlflowClient(store, store)
    client.set_registered_model_alias("smoke", "fig-text", "1")
    monkeypatch.setattr("deploy.promote.evaluate_model", ChosenFigures({"1": 2.0, "2": 1.0}))
    assert main(["promote", "smoke", "--version", "2", "--alias", "fig-text", "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "models:/smoke/2 not promoted to @fig-text: candidate 1.000 <= incumbent 2.000" in out
    assert str(client.get_model_version_by_alias("smoke", "fig-text").version) == "1"
    code, forced = promote(capsys, "--version", "2", "--alias", "fig-text", "--force")
    assert code == 0 and forced["promoted"] and forced["reason"] == "forced"
    assert str(client.get_model_version_by_alias("smoke", "fig-text").version) == "2"


class BlindFigures(ChosenFigures):
    """The broken gate: a score that ignores which model it evaluates (one figure for every version)."""

    def __init__(self, returns: dict[str, float]):
        super().__init__(dict.fromkeys(returns, 0.0))


@pytest.mark.parametrize("case", ["better", "worse"])
def test_a_score_blind_to_the_model_fails_the_gate_check(store, monkeypatch, capsys, case):
    """The check above can fail: with a constant score in place of the evaluation it does."""
    monkeypatch.setitem(globals(), "ChosenFigures", BlindFigures)
    with pytest.raises(AssertionError):
        test_gate_acts_on_the_figures(store, monkeypatch, capsys, case, "2")
