"""Batched (vmap) adaptation against an explicit per-task autograd reference."""

import pytest
import torch

from learner.adaptation import adapt_batched, batched, inner_loss, inner_step, log_prob, unstack
from learner.losses import ppo_clip_loss
from learner.networks import GaussianMLPPolicy
from tests.fakes import POINT_SPEC

N, E, H = 3, 4, 5
LR = 0.3


def random_task_data(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(N, E, H, 2, generator=g),
        "actions": torch.randn(N, E, H, 2, generator=g),
        "logp_old": -torch.rand(N, E, H, generator=g) - 1.0,
        "adv": torch.randn(N, E, H, generator=g),
        "mask": (torch.rand(N, E, H, generator=g) > 0.1).float(),
    }


@pytest.fixture
def policy():
    torch.manual_seed(0)
    module = GaussianMLPPolicy(POINT_SPEC).double()
    with torch.no_grad():  # a non-trivial output layer so second-order terms are not negligible
        module.mean_head.weight.normal_(0, 0.5)
    return module


def task(data: dict, i: int) -> dict:
    return {k: v[i].double() for k, v in data.items()}


def outer_loss(policy, adapted, query, i):
    logp = log_prob(policy, adapted, query["obs"], query["actions"])
    return ppo_clip_loss(logp, query["logp_old"], query["adv"], query["mask"], 0.2)


def reference_meta_gradient(policy, support, query, first_order: bool):
    """Per-task loop with torch.autograd.grad(create_graph=True): the textbook MAML gradient."""
    theta = dict(policy.named_parameters())
    total = 0.0
    for i in range(N):
        loss = inner_loss(policy, theta, task(support, i))
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=not first_order)
        adapted = {k: p - LR * g for (k, p), g in zip(theta.items(), grads)}
        total = total + outer_loss(policy, adapted, task(query, i), i)
    return torch.autograd.grad(total / N, list(theta.values()))


def batched_meta_gradient(policy, support, query, first_order: bool):
    theta = dict(policy.named_parameters())
    support = {k: v.double() for k, v in support.items()}
    query = {k: v.double() for k, v in query.items()}
    adapted = adapt_batched(policy, theta, support, LR, steps=1, first_order=first_order)
    losses = batched(lambda p, d: ppo_clip_loss(log_prob(policy, p, d["obs"], d["actions"]), d["logp_old"],
                                                d["adv"], d["mask"], 0.2))(adapted, query)
    return torch.autograd.grad(losses.mean(), list(theta.values()))


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_meta_gradient_matches_explicit_reference(policy, first_order):
    support, query = random_task_data(1), random_task_data(2)
    expected = reference_meta_gradient(policy, support, query, first_order)
    got = batched_meta_gradient(policy, support, query, first_order)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


def test_second_order_terms_are_present(policy):
    support, query = random_task_data(3), random_task_data(4)
    second = batched_meta_gradient(policy, support, query, first_order=False)
    first = batched_meta_gradient(policy, support, query, first_order=True)
    diff = sum(float((s - f).abs().sum()) for s, f in zip(second, first))
    assert diff > 1e-4


def test_batched_adaptation_equals_per_task_steps(policy):
    support = {k: v.double() for k, v in random_task_data(5).items()}
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    stacked = adapt_batched(policy, theta, support, LR, steps=2)
    for i, adapted in enumerate(unstack(stacked)):
        expected = theta
        for _ in range(2):
            expected = inner_step(policy, expected, task(support, i), LR)
        for k in theta:
            torch.testing.assert_close(adapted[k], expected[k])


def test_per_task_params_continue_from_previous_adaptation(policy):
    support = {k: v.double() for k, v in random_task_data(6).items()}
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    one = adapt_batched(policy, theta, support, LR, steps=1)
    two_in_one_call = adapt_batched(policy, theta, support, LR, steps=2)
    one_then_one = adapt_batched(policy, one, support, LR, steps=1, per_task_params=True)
    for k in theta:
        torch.testing.assert_close(one_then_one[k], two_in_one_call[k])


def test_adaptation_moves_toward_higher_advantage_actions(policy):
    """One inner step raises the log-probability of positive-advantage actions."""
    data = random_task_data(7)
    data["adv"] = torch.ones_like(data["adv"])
    data["logp_old"] = log_prob(policy, dict(policy.named_parameters()), data["obs"].double(),
                                data["actions"].double()).detach()
    d = task({k: v.double() for k, v in data.items()}, 0)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    before = float(log_prob(policy, theta, d["obs"], d["actions"]).mean())
    after = float(log_prob(policy, inner_step(policy, theta, d, 0.05), d["obs"], d["actions"]).mean())
    assert after > before
