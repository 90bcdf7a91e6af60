"""Multi-step MAML (learner/maml_chain.py): training collects k + 1 phases like the evaluation, the outer loss
goes through every inner step, per-step learned rates are published and used at their adaptation round, and
inner_steps=1 is unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from learner.adaptation import adapt_batched, batched, inner_loss, log_prob, select
from learner.base import MetaLearner
from learner.builder import make_learner
from learner.config import LearnerConfig
from learner.maml import MAML
from learner.maml_chain import STEP_RATES, AdaptedParams, adapt_chain
from learner.networks import GaussianMLPPolicy
from learner.sampling import drive, requests_for
from learner.seeds import request_seed
from policy.artifact import PolicyArtifact
from tests.fakes import POINT_SPEC, ROBOT, drive_iteration, point_env_factory, point_tasks
from workers.pool import LocalWorkerPool

TASKS = point_tasks(3, seed=2)
HORIZON, EPISODES = 8, 3


def config(**overrides) -> LearnerConfig:
    base = {"algorithm": "maml", "inner_lr": 0.1, "outer_lr": 0.02, "init_std": 0.5, "hidden_sizes": (16,),
            "device": "cpu", "ppo_epochs": 2, "inner_steps": 3, "inner_rates": "per_step"}
    return LearnerConfig(**{**base, **overrides})


def learner_of(**overrides) -> MAML:
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config(**overrides))
    with torch.no_grad():  # a non-trivial output layer: adaptation moves the policy visibly
        learner.policy.mean_head.weight.normal_(0, 0.5)
    return learner


@pytest.fixture
def pool():
    return LocalWorkerPool(env_factory=point_env_factory)


def requests(seed: int, iteration: int):
    return lambda collect: requests_for(collect, [ROBOT] * len(collect.tasks), HORIZON,
                                        lambda i: request_seed(seed, collect.stream, iteration, i))


def network(weights) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in weights.arrays.items() if not k.startswith("inner_lr/")}


def reference_step(policy, params, data, lr, create_graph=True):
    """One inner step with torch.autograd.grad (no vmap): the textbook update."""
    loss = inner_loss(policy, params, data)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {k: p - lr * g for (k, p), g in zip(params.items(), grads)}


# ---- data accounting -------------------------------------------------------------------------------
def test_training_collects_k_plus_one_phases_each_with_its_steps_policy(pool):
    learner = learner_of()
    with torch.no_grad():
        learner.policy.step_rates.copy_(torch.tensor([0.3, 0.2, 0.1]))
    theta = {k: v.detach().clone() for k, v in learner.params().items()}
    phases = drive(learner.collect(TASKS, 4, EPISODES), pool, requests(0, 4))
    assert [c.phase for c, _ in phases] == ["support", "support", "support", "query"]
    assert [c.stream for c, _ in phases] == ["support", "support1", "support2", "query"]
    assert [c.label for c, _ in phases] == ["pre", "step1", "step2", "post"]
    assert all(b.num_episodes == EPISODES for _, batches in phases for b in batches)
    seeds = {request_seed(0, c.stream, 4, 0) for c, _ in phases}
    assert len(seeds) == 4  # each phase draws its own resets and action noise
    # Reference chain, per task with autograd: phi_{j+1} = phi_j - a_{j+1} grad L(phi_j; D_j).
    for i in range(len(TASKS)):
        params = theta
        for j, (collect, batches) in enumerate(phases):
            weights = collect.weights[i]
            for name, value in network(weights).items():
                if name in params:
                    torch.testing.assert_close(value, params[name].detach(), atol=1e-5, rtol=1e-4)
            batch = batches[i]  # ...and the phase's episodes were sampled by that policy
            logp = log_prob(learner.policy, {k: v.detach() for k, v in params.items()},
                            torch.as_tensor(batch.obs), torch.as_tensor(batch.actions))
            valid = torch.as_tensor(batch.mask) > 0
            torch.testing.assert_close(logp[valid], torch.as_tensor(batch.logp)[valid], atol=1e-4, rtol=1e-4)
            if j < 3:
                data = select(learner.prepare(batches), torch.tensor([i]))
                data = {k: v[0] for k, v in data.items()}
                leaf = {k: v.detach().requires_grad_() for k, v in params.items()}
                rate = float(learner.policy.step_rates[j].detach())
                params = {k: v.detach() for k, v in reference_step(learner.policy, leaf, data, rate, False).items()}
    moved = [float((network(c.weights[0])["mean_head.weight"] - theta["mean_head.weight"]).abs().max())
             for c, _ in phases[1:]]
    assert min(moved) > 1e-4, moved  # every phase after the first acts with an adapted policy
    support, query = learner.collected
    assert len(support) == 3 * len(TASKS) and len(query) == len(TASKS)


def test_update_learns_from_every_phase_and_every_rate(pool):
    learner = learner_of(ppo_epochs=1)
    theta = {k: v.detach().clone() for k, v in learner.params().items()}
    metrics, phases = drive_iteration(learner, pool, TASKS, 0, EPISODES, HORIZON)
    assert len(phases) == 4
    rates = learner.policy.step_rates.detach()
    assert torch.all((rates - 0.1).abs() > 1e-4), rates  # one Adam step on each learned rate
    assert [metrics[f"inner_lr_step{j}"] for j in (1, 2, 3)] == pytest.approx(rates.tolist())
    assert all(np.isfinite(v) for v in metrics.values())
    assert all((learner.params()[k] - v).abs().max() > 0 for k, v in theta.items())
    # The normaliser saw every phase's observations (4 phases x 3 tasks x 3 episodes x 8 steps).
    assert learner.normalizer.count == pytest.approx(4 * 3 * EPISODES * HORIZON, abs=1e-3)


def test_learn_rejects_a_single_support_phase(pool):
    learner = learner_of()
    batches = drive(learner.collect(TASKS, 0, EPISODES), pool, requests(0, 0))
    with pytest.raises(ValueError, match="3 support phases"):
        learner.learn(batches[0][1], batches[-1][1])
    with pytest.raises(ValueError, match="one support phase per inner step"):
        learner.adapt_for_training(batches[0][1], "x")


# ---- the outer gradient ----------------------------------------------------------------------------
def random_data(seed: int, n: int = 3, e: int = 3, h: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, e, h, 2, generator=g, dtype=torch.float64),
            "actions": torch.randn(n, e, h, 2, generator=g, dtype=torch.float64),
            "logp_old": -torch.rand(n, e, h, generator=g, dtype=torch.float64) - 1.0,
            "adv": torch.randn(n, e, h, generator=g, dtype=torch.float64),
            "mask": (torch.rand(n, e, h, generator=g) > 0.1).double()}


def outer(policy, adapted, query):
    logp = log_prob(policy, adapted, query["obs"], query["actions"])
    return -(torch.exp(logp - query["logp_old"]) * query["adv"] * query["mask"]).sum() / query["mask"].sum()


@pytest.fixture
def policy():
    torch.manual_seed(0)
    module = GaussianMLPPolicy(POINT_SPEC).double()
    with torch.no_grad():
        module.mean_head.weight.normal_(0, 0.5)
    return module


def chain_gradient(policy, chain, query, first_order=False):
    theta = dict(policy.named_parameters())
    rates = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64, requires_grad=True)
    adapted = adapt_chain(policy, theta, chain, [rates[j] for j in range(len(chain))], first_order)
    loss = batched(lambda p, q: outer(policy, p, q))(adapted, query).mean()
    grads = torch.autograd.grad(loss, [*theta.values(), rates])
    return grads[:-1], grads[-1]


def test_outer_gradient_matches_the_per_task_autograd_chain(policy):
    chain, query = [random_data(s) for s in (1, 2, 3)], random_data(4)
    theta_grads, rate_grads = chain_gradient(policy, chain, query)
    theta = dict(policy.named_parameters())
    rates = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64, requires_grad=True)
    total = 0.0
    for i in range(3):
        params = theta
        for j, data in enumerate(chain):
            params = reference_step(policy, params, {k: v[i] for k, v in data.items()}, rates[j])
        total = total + outer(policy, params, {k: v[i] for k, v in query.items()})
    expected = torch.autograd.grad(total / 3, [*theta.values(), rates])
    for got, want in zip([*theta_grads, rate_grads], expected):
        torch.testing.assert_close(got, want)
    assert torch.all(torch.isfinite(rate_grads)) and torch.all(rate_grads.abs() > 1e-6), rate_grads
    assert all(torch.isfinite(g).all() and g.abs().max() > 1e-6 for g in theta_grads)


def test_theta_gradient_goes_through_every_inner_step(policy):
    chain, query = [random_data(s) for s in (1, 2, 3)], random_data(4)
    base, _ = chain_gradient(policy, chain, query)
    for j in range(3):  # step j's data shape theta's meta-gradient: it is in the graph
        changed = [dict(d) for d in chain]
        changed[j]["adv"] = -changed[j]["adv"]
        grads, _ = chain_gradient(policy, changed, query)
        assert max(float((a - b).abs().max()) for a, b in zip(grads, base)) > 1e-4, j
    first, rate_first = chain_gradient(policy, chain, query, first_order=True)
    assert max(float((a - b).abs().max()) for a, b in zip(first, base)) > 1e-4  # second-order terms present
    assert torch.all(rate_first.abs() > 1e-6)  # the rates learn under first order too


# ---- evaluation and fleet adapt ----------------------------------------------------------------------
def adaptation_weights(learner, pool, rounds=4):
    phases = drive(learner.adaptation(TASKS, rounds, "ev", 2), pool, requests(7, 0))
    return [network(c.weights[0]) for c, _ in phases], [b for _, b in phases]


def test_evaluation_adapts_round_j_with_step_js_rate(pool):
    learner = learner_of()
    with torch.no_grad():
        learner.policy.step_rates.copy_(torch.tensor([0.3, 0.0, 0.05]))
    rounds, batches = adaptation_weights(learner, pool)
    head = [r["mean_head.weight"] for r in rounds]
    assert (head[1] - head[0]).abs().max() > 1e-4  # round 1: step 1 with rate 0.3
    for name in rounds[1]:
        assert torch.equal(rounds[2][name], rounds[1][name])  # round 2: step 2's rate is 0
    assert (head[3] - head[2]).abs().max() > 1e-5  # round 3: step 3 with rate 0.05
    # Round 3 is exactly phi_2 - 0.05 grad L(phi_2; round 2's episodes) (task 0).
    phi2 = {k: rounds[2][k].unsqueeze(0) for k in learner.params()}
    data = select(learner.prepare(batches[2]), torch.tensor([0]))
    with torch.no_grad():
        expected = adapt_batched(learner.policy, phi2, data, 0.05, per_task_params=True)
    for name, value in expected.items():
        torch.testing.assert_close(rounds[3][name], value[0], atol=1e-6, rtol=1e-5)


def test_published_rates_drive_fleet_adapt_style_steps(pool, tmp_path):
    learner = learner_of()
    drive_iteration(learner, pool, TASKS, 0, EPISODES, HORIZON)
    weights = learner.policy_weights("published")
    assert weights.arrays[STEP_RATES].shape == (3,)
    PolicyArtifact.build(weights).save(tmp_path)
    loaded = PolicyArtifact.load(tmp_path).weights  # check_schema accepts inner_lr/steps
    fresh = make_learner(POINT_SPEC, config(inner_lr=0.7))  # what `fleet eval` / `fleet adapt` build
    fresh.policy.load_weights(loaded)
    torch.testing.assert_close(fresh.policy.step_rates, learner.policy.step_rates.detach())
    for a, b in zip(adaptation_weights(fresh, pool)[0], adaptation_weights(learner, pool)[0]):
        for name in a:
            torch.testing.assert_close(a[name], b[name])
    # deploy/adapt.py's loop: adapt(..., params=params) again and again takes steps 1, 2, 3 in turn.
    rounds, batches = adaptation_weights(learner, pool)
    params, seen = None, []
    for k in range(3):
        params, _ = fresh.adapt(batches[k], f"step{k + 1}", params=params)
        assert isinstance(params, AdaptedParams) and params.steps == k + 1
        seen.append({n: v[0] for n, v in params.items()})
    for k in range(3):
        for name, value in seen[k].items():
            torch.testing.assert_close(value, rounds[k + 1][name])


def test_wrong_number_of_published_rates_is_an_error(pool):
    weights = learner_of().policy_weights("v")
    other = make_learner(POINT_SPEC, config(inner_steps=2))
    with pytest.raises(ValueError, match="inner_steps=2"):
        other.policy.load_weights(weights)


def test_per_step_adapt_of_plain_params_needs_the_step(pool):
    learner = learner_of()
    batches = drive(learner.collect(TASKS, 0, EPISODES), pool, requests(0, 0))[0][1]
    params, _ = learner.adapt(batches, "a")
    with pytest.raises(ValueError, match="step="):
        learner.adapt(batches, "b", params=dict(params))
    again, _ = learner.adapt(batches, "b", params=dict(params), step=1)
    assert again.steps == 2


# ---- checkpoints and config ------------------------------------------------------------------------
def test_state_dict_round_trip_continues_identically(pool):
    learner = learner_of()
    drive_iteration(learner, pool, TASKS, 0, EPISODES, HORIZON)
    other = make_learner(POINT_SPEC, config())
    other.load_state_dict(copy.deepcopy(learner.state_dict()))
    torch.testing.assert_close(other.policy.step_rates, learner.policy.step_rates.detach())
    for it_learner in (learner, other):
        torch.manual_seed(1)
        drive_iteration(it_learner, pool, TASKS, 1, EPISODES, HORIZON)
    assert torch.equal(other.policy.step_rates, learner.policy.step_rates)
    for name, value in learner.params().items():
        assert torch.equal(other.params()[name], value)
    with pytest.raises(ValueError, match="inner_rates=fixed"):
        other.load_state_dict(make_learner(POINT_SPEC, config(inner_rates="fixed")).state_dict())


def test_metasgd_rejects_per_step_rates():
    with pytest.raises(ValueError, match="inner_rates 'per_step' applies to algorithm 'maml'"):  # at config time
        config(algorithm="metasgd")


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_fixed_rates_chain_for_maml_and_metasgd(pool, algorithm):
    learner = learner_of(algorithm=algorithm, inner_rates="fixed", inner_steps=2)
    metrics, phases = drive_iteration(learner, pool, TASKS, 0, EPISODES, HORIZON)
    assert [c.stream for c, _ in phases] == ["support", "support1", "query"]
    assert STEP_RATES not in learner.policy_weights("v").arrays
    assert np.isfinite(metrics["outer_loss"])


# ---- inner_steps=1: unchanged --------------------------------------------------------------------------
class OneStepMAML(MetaLearner):
    """MAML's learn() as it was before multi-step chains (the bitwise reference)."""

    algorithm = "maml"

    def learn(self, support, query):
        cfg = self.config
        support_data, query_data = self.prepare(support), self.prepare(query)
        for idx in self.minibatch_epochs(len(support)):
            adapted = adapt_batched(self.policy, self.params(), select(support_data, idx), cfg.inner_lr,
                                    cfg.inner_steps, cfg.first_order)
            query_batch = select(query_data, idx)
            losses, kls = batched(self.ppo_terms)(adapted, query_batch)
            metrics = self.ppo_step(losses, kls, query_batch["task_weight"])
        return metrics


@pytest.mark.parametrize("first_order", [False, True])
def test_one_step_maml_is_bitwise_unchanged(pool, first_order):
    cfg = config(inner_steps=1, inner_rates="fixed", first_order=first_order, minibatches=2)
    torch.manual_seed(0)
    maml = make_learner(POINT_SPEC, cfg)
    torch.manual_seed(0)
    reference = OneStepMAML(POINT_SPEC, cfg)
    for it in range(2):
        torch.manual_seed(10 + it)
        metrics, phases = drive_iteration(maml, pool, TASKS, it, EPISODES, HORIZON)
        torch.manual_seed(10 + it)
        expected, reference_phases = drive_iteration(reference, pool, TASKS, it, EPISODES, HORIZON)
        assert metrics == expected
        assert [c.stream for c, _ in phases] == ["support", "query"] == [c.stream for c, _ in reference_phases]
    for name, value in reference.params().items():
        assert torch.equal(maml.params()[name], value), name
    assert set(maml.state_dict()) == set(reference.state_dict())
    assert set(maml.policy_weights("v").arrays) == set(reference.policy_weights("v").arrays)


def test_one_step_with_a_learned_rate(pool):
    learner = learner_of(inner_steps=1)
    metrics, phases = drive_iteration(learner, pool, TASKS, 0, EPISODES, HORIZON)
    assert [c.stream for c, _ in phases] == ["support", "query"]
    assert abs(metrics["inner_lr_step1"] - 0.1) > 1e-4


@pytest.mark.parametrize("bad", [np.zeros((3, 1), np.float32), np.array([0.1, np.nan, 0.1], np.float32)])
def test_artifact_rejects_malformed_step_rates(tmp_path, bad):
    from policy import PolicyWeights
    from policy.artifact import ArtifactError

    weights = learner_of().policy_weights("v")
    PolicyArtifact.build(PolicyWeights(weights.spec, {**weights.arrays, STEP_RATES: bad}, "v")).save(tmp_path)
    with pytest.raises(ArtifactError, match="inner_lr/steps"):
        PolicyArtifact.load(tmp_path)
