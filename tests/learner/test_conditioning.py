"""Task conditioning: torch == numpy per mode, the task vector changes the policy, gradients reach
the conditioning parameters, task encodings, and unconditioned weights keep today's layout."""

import numpy as np
import pytest
import torch

from learner.adaptation import log_prob
from learner.conditioning import TaskEncoder, conditioned_spec, flatten_params
from learner.config import LearnerConfig
from learner.mtppo import MultiTaskPPO
from learner.networks import GaussianMLPPolicy
from policy import NumpyGaussianPolicy, PolicySpec
from tests.fakes import POINT_SPEC, ROBOT, point_env_factory, point_tasks
from tests.learner.learning_runs import nav2d_config, nav2d_store, not_learned, run  # noqa: F401 (a fixture)
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

MODES = ["concat", "additive", "multihead", "film"]
C = 3
SPEC = PolicySpec(obs_dim=4, act_dim=2, hidden_sizes=(8, 6))



def random_policy(mode: str, seed: int = 0) -> GaussianMLPPolicy:
    """A policy whose every parameter is non-trivial (the default init zeroes the head's bias)."""
    torch.manual_seed(seed)
    net = GaussianMLPPolicy(conditioned_spec(SPEC, mode, C))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
        net.obs_mean.normal_(0.0, 1.0)
        net.obs_std.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("mode", ["none", *MODES])
@pytest.mark.parametrize("per_row", [False, True])
def test_torch_and_numpy_agree(mode, per_row):
    net = random_policy(mode)
    rng = np.random.default_rng(1)
    obs = rng.normal(0, 2, (7, 4)).astype(np.float32)
    actions = rng.normal(0, 1, (7, 2)).astype(np.float32)
    context = None
    if mode != "none":
        context = rng.uniform(0, 1, (7, C) if per_row else (C,)).astype(np.float32)
    ctx = None if context is None else torch.as_tensor(context)
    mean, _ = net(torch.as_tensor(obs), ctx)
    logp = log_prob(net, dict(net.named_parameters()), torch.as_tensor(obs), torch.as_tensor(actions), ctx)
    numpy_policy = NumpyGaussianPolicy(net.to_weights("v"))
    np.testing.assert_allclose(numpy_policy.mean(obs, context), mean.detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(numpy_policy.log_prob(obs, actions, context), logp.detach().numpy(), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_the_task_vector_changes_the_policy(mode):
    net = random_policy(mode)
    obs = torch.randn(5, 4)
    one, _ = net(obs, torch.tensor([1.0, 0.0, 0.0]))
    two, _ = net(obs, torch.tensor([0.0, 1.0, 0.0]))
    assert (one - two).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_the_default_init_is_task_dependent_too(mode):
    """No zero-initialised conditioning path: tasks differ before any training step."""
    torch.manual_seed(0)
    net = GaussianMLPPolicy(conditioned_spec(SPEC, mode, C))
    obs = torch.randn(5, 4)
    assert (net(obs, torch.eye(C)[0])[0] - net(obs, torch.eye(C)[1])[0]).abs().max() > 1e-6


CONDITIONING_PARAMS = {"additive": ["context_embed.weight"], "film": ["film.0.weight", "film.1.weight"],
                       "multihead": ["mean_heads.weight"], "concat": ["hidden.0.weight"]}


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_the_conditioning_parameters(mode):
    net = random_policy(mode)
    params = dict(net.named_parameters())
    obs, actions = torch.randn(6, 4), torch.randn(6, 2)
    log_prob(net, params, obs, actions, torch.tensor([0.0, 1.0, 0.0])).sum().backward()
    for name in CONDITIONING_PARAMS[mode]:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    if mode == "concat":  # the context columns of the first layer learn
        assert params["hidden.0.weight"].grad[:, SPEC.obs_dim:].abs().sum() > 0
    if mode == "multihead":  # a one-hot vector trains only its own head
        grad = params["mean_heads.weight"].grad
        assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_unconditioned_weights_keep_the_original_layout():
    assert POINT_SPEC.weight_names() == ["obs_mean", "obs_std", "hidden.0.weight", "hidden.0.bias",
                                         "hidden.1.weight", "hidden.1.bias", "mean_head.weight",
                                         "mean_head.bias", "log_std"]
    assert set(GaussianMLPPolicy(POINT_SPEC).state_dict()) == set(POINT_SPEC.weight_names())


def test_an_old_artifact_still_loads_and_runs(tmp_path):
    from policy.artifact import PolicyArtifact
    from tests.fakes import make_policy_dir

    artifact = PolicyArtifact.load(make_policy_dir(tmp_path / "p", obs_dim=5))
    assert artifact.weights.spec.conditioning == "none"
    actions, _ = NumpyGaussianPolicy(artifact.weights).sample(np.zeros((2, 5)), np.random.default_rng(0))
    assert actions.shape == (2, 3)


@pytest.mark.parametrize("mode", MODES)
def test_weight_names_and_shapes_match_the_torch_module(mode):
    spec = conditioned_spec(SPEC, mode, C)
    state = GaussianMLPPolicy(spec).state_dict()
    assert set(state) == set(spec.weight_names())
    assert {k: tuple(v.shape) for k, v in state.items()} == spec.weight_shapes()


def test_conditioned_policy_without_a_task_vector_is_a_clear_error():
    policy = NumpyGaussianPolicy(random_policy("film").to_weights("v7"))
    with pytest.raises(ValueError, match="task vector of length 3"):
        policy.sample(np.zeros((2, 4)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="length 3"):
        policy.mean(np.zeros((2, 4)), np.zeros(2))


def test_multihead_spec_needs_one_head_per_context_entry():
    with pytest.raises(ValueError, match=r"num_heads \(2\) must equal context_dim \(3\)"):
        PolicySpec(4, 2, conditioning="multihead", context_dim=3, num_heads=2)


# ---- task vectors ------------------------------------------------------------------------------
def test_onehot_encoding_and_the_uniform_vector_for_held_out_tasks():
    train, held_out = point_tasks(4), point_tasks(2, seed=9, split="test")
    encoder = TaskEncoder("onehot", train)
    assert encoder.dim == 4
    assert encoder.encode(train[2]) == (0.0, 0.0, 1.0, 0.0)
    assert encoder.encode(held_out[0]) == (0.25,) * 4


def test_params_encoding_flattens_sorted_keys_and_standardises_on_train_tasks():
    assert flatten_params({"b": [1, [2, 3]], "a": 0.5, "name": "x", "flag": True}) == [0.5, 1.0, 2.0, 3.0, 1.0]
    train = point_tasks(6)
    encoder = TaskEncoder("params", train)
    table = np.array([encoder.encode(t) for t in train])
    np.testing.assert_allclose(table.mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(table.std(0), 1.0, atol=1e-9)
    restored = TaskEncoder("params", point_tasks(6, seed=3))  # other tasks: other scale, until loaded
    restored.load_state_dict(encoder.state_dict())
    held_out = point_tasks(1, seed=5, split="test")[0]
    assert restored.encode(held_out) == encoder.encode(held_out)


def test_the_learner_derives_its_conditioned_spec_and_keeps_the_scale_in_its_state():
    tasks = point_tasks(5)
    learner = MultiTaskPPO(POINT_SPEC, LearnerConfig(algorithm="mtppo", conditioning="multihead", device="cpu"),
                           tasks)
    spec = learner.policy.spec
    assert (spec.conditioning, spec.context_dim, spec.num_heads) == ("multihead", 5, 5)
    assert learner.context_for(tasks[1]) == (0.0, 1.0, 0.0, 0.0, 0.0)
    cfg = LearnerConfig(algorithm="mtppo", conditioning="concat", task_encoding="params", device="cpu")
    learner = MultiTaskPPO(POINT_SPEC, cfg, tasks)
    state = learner.state_dict()
    assert state["task_encoder"]["encoding"] == "params"
    other = MultiTaskPPO(POINT_SPEC, cfg, point_tasks(5, seed=8))
    other.load_state_dict(state)
    assert other.context_for(tasks[0]) == learner.context_for(tasks[0])
    assert MultiTaskPPO(POINT_SPEC, LearnerConfig(algorithm="mtppo", device="cpu"), tasks).context_for(tasks[0]) == ()


def test_multihead_needs_onehot_task_vectors():
    cfg = LearnerConfig(algorithm="mtppo", conditioning="multihead", task_encoding="params", device="cpu")
    with pytest.raises(ValueError, match="needs task_encoding 'onehot'"):
        MultiTaskPPO(POINT_SPEC, cfg, point_tasks(3))


@pytest.mark.parametrize("mode", MODES)
def test_worker_rollouts_use_the_task_vector_like_the_learner(mode):
    """End to end: the batch's behaviour log-probs (numpy, in the worker) equal the learner's torch ones."""
    tasks = point_tasks(3)
    learner = MultiTaskPPO(POINT_SPEC, LearnerConfig(algorithm="mtppo", conditioning=mode, device="cpu"), tasks)
    weights = learner.policy_weights("v1")
    request = SampleRequest(tasks[2], ROBOT, "v1", 3, 6, seed=4, context=learner.context_for(tasks[2]))
    [batch] = LocalWorkerPool(1, point_env_factory).sample([request], {"v1": weights})
    np.testing.assert_array_equal(batch.context, [0.0, 0.0, 1.0])
    data = learner.prepare([batch])
    logp = log_prob(learner.policy, learner.params(), data["obs"][0], data["actions"][0], data["context"][0])
    np.testing.assert_allclose(logp.detach().numpy() * batch.mask, batch.logp * batch.mask, atol=1e-5)


# ---- learning: conditioning against a task-agnostic control ------------------------------------------
def per_task_returns(conditioning: str, seed: int) -> np.ndarray:
    """Each training task's return (no adaptation) after a short MT-PPO run on 8 nav2d goals."""
    cfg = nav2d_config("mtppo", seed, iterations=15, tasks=8, meta_batch=8, eval_tasks=8, conditioning=conditioning,
                       ppo_epochs=3)
    return np.asarray(run(cfg).train_tasks.returns)


@pytest.mark.usefixtures("nav2d_store")
@pytest.mark.parametrize("seed", [0, 1])
def test_the_task_vector_is_what_the_policy_learns_from(seed):
    """Same budget, tasks and seed, conditioning "none" as the control: told its goal, the policy reaches each
    goal; without, it can only go between them. Tuned at seeds 0-3: gap 7.06/1.29, 7.06/1.34, 6.97/1.37,
    6.87/1.41 (mean / stderr over the 8 tasks), every task gained."""
    gap = per_task_returns("concat", seed) - per_task_returns("none", seed)
    print(f"seed {seed}: conditioned minus task-agnostic, per task {np.round(gap, 2)}")
    assert not not_learned(gap, margin=1.0, most=0.75), np.round(gap, 2)


@pytest.mark.usefixtures("nav2d_store")
def test_a_policy_blind_to_its_task_vector_fails_that_check(monkeypatch):
    """Negative control: every training task gets the same (uniform) task vector, so the concat policy has
    nothing to tell the goals apart by and must not clear the bar the informed one clears."""
    def blind(self, task):
        return () if self.encoder is None else (1.0 / self.encoder.dim,) * self.encoder.dim

    monkeypatch.setattr(MultiTaskPPO, "context_for", blind)
    gap = per_task_returns("concat", 0) - per_task_returns("none", 0)
    print(f"blind task vector minus task-agnostic, per task {np.round(gap, 2)}")
    assert not_learned(gap, margin=1.0, most=0.75), np.round(gap, 2)
