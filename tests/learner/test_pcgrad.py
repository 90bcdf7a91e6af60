"""PCGrad on hand-built gradients, batched per-task gradients, and the learner's PCGrad step."""

import pytest
import torch

from learner.adaptation import batched
from learner.config import LearnerConfig
from learner.mtppo import MultiTaskPPO
from learner.pcgrad import pcgrad, pcgrad_backward, per_task_gradients, project_conflicting
from tests.fakes import POINT_SPEC, point_tasks


def test_two_conflicting_gradients_are_projected_onto_each_others_normal_plane():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # dot = -1
    projected = project_conflicting(grads)
    # g1 - (g1.g2)/|g2|^2 g2 = [1, 0] + 0.5 [-1, 1];  g2 - (g2.g1)/|g1|^2 g1 = [-1, 1] + [1, 0]
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    assert float(projected[0] @ grads[1]) == pytest.approx(0.0, abs=1e-7)
    assert float(projected[1] @ grads[0]) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(pcgrad(grads), torch.tensor([0.5, 1.5]))


def test_non_conflicting_gradients_are_unchanged():
    grads = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(project_conflicting(grads), grads)
    torch.testing.assert_close(pcgrad(grads), grads.sum(0))


def test_three_tasks_only_the_conflicting_pair_is_touched():
    grads = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for seed in range(5):  # whatever the order
        torch.testing.assert_close(project_conflicting(grads, torch.Generator().manual_seed(seed)), expected)


def test_the_order_of_projections_is_random_per_task():
    """g1 conflicts with g2 and g3; the two visiting orders give different, hand-computed results."""
    grads = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [-1.0, -1.0]])
    g2_first = torch.tensor([0.2, -0.2])  # [1,0] + 0.2 [-1,2] = [0.8,0.4]; + 0.6 [-1,-1]
    g3_first = torch.tensor([0.2, 0.1])  # [1,0] + 0.5 [-1,-1] = [0.5,-0.5]; + 0.3 [-1,2]
    seen = set()
    for seed in range(20):
        first = project_conflicting(grads, torch.Generator().manual_seed(seed))[0]
        if torch.allclose(first, g2_first):
            seen.add("g2 first")
        elif torch.allclose(first, g3_first):
            seen.add("g3 first")
        else:
            raise AssertionError(f"unexpected projection {first}")
    assert seen == {"g2 first", "g3 first"}


def test_the_order_comes_from_torch_rng_so_it_is_reproducible():
    grads = torch.randn(5, 7)
    torch.manual_seed(3)
    one = project_conflicting(grads)
    torch.manual_seed(3)
    torch.testing.assert_close(project_conflicting(grads), one)


def test_per_task_gradients_match_a_loop_of_autograd_calls():
    torch.manual_seed(0)
    w, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, requires_grad=True)
    x = torch.randn(5, 10, 4)
    losses = torch.tanh(x @ w.T + b).pow(2).mean((1, 2)) * torch.arange(1.0, 6.0)
    batched_grads = per_task_gradients(losses, [w, b])
    for i in range(5):
        gw, gb = torch.autograd.grad(losses[i], [w, b], retain_graph=True)
        torch.testing.assert_close(batched_grads[i], torch.cat([gw.reshape(-1), gb]))


def test_pcgrad_backward_without_conflicts_equals_plain_backward():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = torch.stack([w[0] * 3.0, w[1] * 5.0 + w[0]])  # gradients [3,0] and [1,5]: dot 3 > 0
    pcgrad_backward([w], losses, shared_loss=(w * w).sum())
    torch.testing.assert_close(w.grad, torch.tensor([3.0 + 1.0 + 2.0, 5.0 + 4.0]))


def test_pcgrad_backward_writes_the_projected_sum():
    w = torch.tensor([0.0, 0.0], requires_grad=True)
    losses = torch.stack([w @ torch.tensor([1.0, 0.0]), w @ torch.tensor([-1.0, 1.0])])
    pcgrad_backward([w], losses)
    torch.testing.assert_close(w.grad, torch.tensor([0.5, 1.5]))


def _learner(pcgrad_on: bool, tasks) -> MultiTaskPPO:
    torch.manual_seed(0)
    cfg = LearnerConfig(algorithm="mtppo", conditioning="concat", pcgrad=pcgrad_on, device="cpu", max_grad_norm=1e6)
    return MultiTaskPPO(POINT_SPEC, cfg, tasks)


def _data(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, 4, 5, 2, generator=g), "actions": torch.randn(n, 4, 5, 2, generator=g),
            "logp_old": -torch.rand(n, 4, 5, generator=g) - 1.0, "adv": torch.randn(n, 4, 5, generator=g),
            "mask": torch.ones(n, 4, 5), "task_weight": torch.ones(n), "context": torch.eye(n)}


def _step(learner, data):
    losses, kls = batched(learner.ppo_terms, per_task_params=False)(learner.params(), data)
    learner.ppo_step(losses, kls, data["task_weight"])
    return {k: v.detach().clone() for k, v in learner.params().items()}


def test_learner_pcgrad_step_with_one_task_is_the_plain_step():
    tasks = point_tasks(1)
    plain, projected = _step(_learner(False, tasks), _data(1)), _step(_learner(True, tasks), _data(1))
    for k in plain:
        torch.testing.assert_close(projected[k], plain[k], rtol=1e-5, atol=1e-6)


def test_learner_pcgrad_step_uses_the_projected_gradient():
    tasks = point_tasks(3)
    learner = _learner(True, tasks)
    data = _data(3, seed=1)
    losses, kls = batched(learner.ppo_terms, per_task_params=False)(learner.params(), data)
    params = list(learner.policy.parameters())
    grads = per_task_gradients(losses / 3, params)
    assert (grads @ grads.T).min() < 0  # the tasks do conflict
    torch.manual_seed(11)
    expected = pcgrad(grads)
    torch.manual_seed(11)
    learner.ppo_step(losses, kls, data["task_weight"])  # .grad stays after the (unclipped) Adam step
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in params]), expected)
    assert not torch.allclose(expected, grads.sum(0))
