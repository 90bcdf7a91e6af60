"""Multi-task learning: advantage normalisation per task vs global, per-task mean losses, task
weights, independent single-task networks, per-task evaluation/transfer, and short training runs
on the PointEnv fake that improve train-task return for every conditioning mode."""

import numpy as np
import pytest
import torch

from learner.adaptation import batched
from learner.builder import make_learner
from learner.config import LearnerConfig, load_config
from learner.losses import masked_mean
from learner.mtppo import MultiTaskPPO
from learner.multitask_eval import TaskEvalResult, evaluate_tasks, transfer, transfer_metrics
from learner.single_task import SingleTaskPPO
from tests.fakes import POINT_SPEC, ROBOT, drive_iteration, point_env_factory, point_protocol, point_tasks
from workers.batch import Batch
from workers.pool import LocalWorkerPool

E, H = 3, 6



def hand_batch(task, reward_scale: float, seed: int, valid_steps: int = H) -> Batch:
    rng = np.random.default_rng(seed)
    mask = np.zeros((E, H), np.float32)
    mask[:, :valid_steps] = 1.0
    return Batch(obs=rng.normal(0, 1, (E, H, 2)).astype(np.float32),
                 actions=rng.normal(0, 1, (E, H, 2)).astype(np.float32),
                 logp=np.full((E, H), -2.0, np.float32),
                 rewards=(reward_scale * rng.normal(0, 1, (E, H))).astype(np.float32) * mask,
                 mask=mask, success=np.zeros(E, bool), task=task, robot=ROBOT, policy_version="v", phase="support")


def mtppo(tasks, **kw) -> MultiTaskPPO:
    torch.manual_seed(0)
    return MultiTaskPPO(POINT_SPEC, LearnerConfig(algorithm="mtppo", device="cpu", **kw), tasks)


# ---- advantage normalisation -------------------------------------------------------------------
def test_per_task_normalisation_puts_every_task_on_one_scale():
    tasks = point_tasks(2)
    batches = [hand_batch(tasks[0], 1.0, 0), hand_batch(tasks[1], 100.0, 1)]
    data = mtppo(tasks).prepare(batches)
    for i in range(2):
        adv, mask = data["adv"][i], data["mask"][i]
        assert float(masked_mean(adv, mask)) == pytest.approx(0.0, abs=1e-5)
        assert float(masked_mean(adv**2, mask)) == pytest.approx(1.0, abs=1e-4)


def test_global_normalisation_lets_large_reward_tasks_dominate():
    tasks = point_tasks(2)
    batches = [hand_batch(tasks[0], 1.0, 0), hand_batch(tasks[1], 100.0, 1)]
    data = mtppo(tasks, normalization="global").prepare(batches)
    adv, mask = data["adv"], data["mask"]
    assert float(masked_mean(adv, mask)) == pytest.approx(0.0, abs=1e-5)
    assert float(masked_mean(adv**2, mask)) == pytest.approx(1.0, abs=1e-4)
    small, large = (float(masked_mean(adv[i] ** 2, mask[i])) for i in range(2))
    assert large > 100 * small


# ---- per-task mean losses and task weights -----------------------------------------------------
def test_each_task_loss_is_a_mean_over_its_own_steps():
    """A task with 6x more valid steps counts the same: the step objective is the mean of task means."""
    tasks = point_tasks(2)
    learner = mtppo(tasks)
    data = learner.prepare([hand_batch(tasks[0], 1.0, 0, valid_steps=1), hand_batch(tasks[1], 1.0, 1)])
    losses, _ = batched(learner.ppo_terms, per_task_params=False)(learner.params(), data)
    per_task = [learner.ppo_terms(learner.params(), {k: v[i] for k, v in data.items()})[0] for i in range(2)]
    torch.testing.assert_close(losses, torch.stack(per_task))
    pooled = -masked_mean(data["adv"], data["mask"])  # at logp == logp_old, the step-weighted loss
    assert float(losses.detach().mean()) != pytest.approx(float(pooled), abs=1e-3)


def test_task_weights_by_task_id_then_family():
    tasks = point_tasks(3)
    learner = mtppo(tasks, task_weights={"point": 2.0, "point/train/1": 5.0})
    data = learner.prepare([hand_batch(t, 1.0, i) for i, t in enumerate(tasks)])
    torch.testing.assert_close(data["task_weight"], torch.tensor([2.0, 5.0, 2.0]))


def test_task_weights_scale_each_task_loss_normalised_to_mean_one():
    tasks = point_tasks(2)
    batches = [hand_batch(tasks[0], 1.0, 0), hand_batch(tasks[1], 1.0, 1)]
    weighted, plain = mtppo(tasks, task_weights={"point/train/0": 3.0}), mtppo(tasks)
    data = weighted.prepare(batches)
    losses, kls = batched(weighted.ppo_terms, per_task_params=False)(weighted.params(), data)
    metrics = weighted.ppo_step(losses, kls, data["task_weight"])  # weights [3, 1] -> [1.5, 0.5]
    assert metrics["outer_loss"] == pytest.approx(float((losses.detach() * torch.tensor([1.5, 0.5])).mean()), abs=1e-6)
    losses, kls = batched(plain.ppo_terms, per_task_params=False)(plain.params(), data)
    plain.ppo_step(losses * torch.tensor([1.5, 0.5]), kls)
    for (name, a), b in zip(weighted.params().items(), plain.params().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_unknown_task_weight_keys_are_a_clear_error():
    with pytest.raises(ValueError, match=r"task_weights keys \['pointt'\] name no training task or family"):
        mtppo(point_tasks(2), task_weights={"pointt": 2.0})


# ---- single-task baseline ----------------------------------------------------------------------
def single(tasks, **kw) -> SingleTaskPPO:
    torch.manual_seed(0)
    return SingleTaskPPO(POINT_SPEC, LearnerConfig(algorithm="single_task", device="cpu", ppo_epochs=2, **kw), tasks)


def params_of(learner: SingleTaskPPO, i: int) -> dict:
    return {k: v.detach().clone() for k, v in learner.networks[i].named_parameters()}


def test_single_task_networks_stay_independent():
    tasks = point_tasks(3)
    batch = {i: hand_batch(t, 1.0, i) for i, t in enumerate(tasks)}
    alone, together = single(tasks), single(tasks)
    before = [params_of(alone, i) for i in range(3)]
    alone.learn([batch[0]], [batch[0]])
    together.learn([batch[0], batch[1]], [batch[0], batch[1]])
    for name, value in before[2].items():  # no data for task 2: untouched (no Adam momentum either)
        assert torch.equal(params_of(alone, 2)[name], value) and torch.equal(params_of(together, 2)[name], value)
    assert any(not torch.equal(params_of(alone, 0)[k], before[0][k]) for k in before[0])
    for name in before[0]:  # task 0's update does not depend on task 1's data
        torch.testing.assert_close(params_of(together, 0)[name], params_of(alone, 0)[name], rtol=1e-5, atol=1e-6)
    together.learn([batch[1]], [batch[1]])  # task 1 trains again; task 0 (momentum from before) stays
    torch.testing.assert_close(params_of(together, 0), params_of(alone, 0), rtol=1e-5, atol=1e-6)


def test_single_task_weights_per_task_and_from_scratch_for_held_out():
    tasks, held_out = point_tasks(2), point_tasks(1, seed=4, split="test")
    learner = single(tasks)
    learner.learn([hand_batch(tasks[0], 1.0, 0)], [hand_batch(tasks[0], 1.0, 1)])
    w0, w1, w_new = learner.weights_for([tasks[0], tasks[1], held_out[0]], "it3")
    assert len({w0.version, w1.version, w_new.version}) == 3
    np.testing.assert_array_equal(w0.arrays["mean_head.bias"], learner.networks[0].mean_head.bias.detach().numpy())
    np.testing.assert_array_equal(w_new.arrays["hidden.0.weight"], learner.policy.hidden[0].weight.detach().numpy())
    assert not np.array_equal(w0.arrays["hidden.0.weight"], w1.arrays["hidden.0.weight"])
    _, [adapted] = learner.adapt([hand_batch(tasks[1], 1.0, 2)], "a")  # adaptation starts from task 1's network
    assert not np.array_equal(adapted.arrays["hidden.0.weight"], w_new.arrays["hidden.0.weight"])


def test_single_task_state_round_trip():
    tasks = point_tasks(2)
    learner = single(tasks)
    learner.learn([hand_batch(tasks[1], 1.0, 0)], [hand_batch(tasks[1], 1.0, 1)])
    restored = single(point_tasks(2))
    torch.manual_seed(5)  # other initial networks
    restored.load_state_dict(learner.state_dict())
    for i in range(2):
        for name, value in params_of(learner, i).items():
            assert torch.equal(params_of(restored, i)[name], value)
    assert restored.optimizer.state_dict()["state"].keys() == learner.optimizer.state_dict()["state"].keys()


# ---- per-task evaluation and transfer ----------------------------------------------------------
def test_evaluate_tasks_reports_each_task_and_is_seeded():
    tasks = point_tasks(3)
    learner = mtppo(tasks, conditioning="concat")
    pool = LocalWorkerPool(1, point_env_factory)
    one = evaluate_tasks(learner, pool, point_protocol(tasks, episodes=2, horizon=5, seed=1))
    two = evaluate_tasks(learner, pool, point_protocol(tasks, episodes=2, horizon=5, seed=1))
    assert one.returns == two.returns and one.env_steps == 3 * 2 * 5
    metrics = one.metrics()
    assert set(metrics) == {f"task/point/train/{i}/{k}" for i in range(3) for k in ("return", "success")}
    assert metrics["task/point/train/2/return"] == one.returns[2]


def test_transfer_is_multi_task_minus_single_task_return():
    multi = TaskEvalResult(["a", "b"], [5.0, -1.0], [1.0, 0.0], episodes=2)
    single_result = TaskEvalResult(["b", "a"], [2.0, 3.0], [0.0, 1.0], episodes=2)
    assert transfer(multi, single_result) == {"a": 2.0, "b": -3.0}
    assert transfer(TaskEvalResult.from_dict(multi.to_dict()), single_result) == {"a": 2.0, "b": -3.0}
    assert transfer_metrics({"a": 2.0, "b": -3.0}) == {"transfer/a": 2.0, "transfer/b": -3.0, "transfer/mean": -0.5,
                                                       "transfer/negative_fraction": 0.5}
    with pytest.raises(ValueError, match=r"only one result: \['c'\]"):
        transfer(multi, TaskEvalResult(["a", "b", "c"], [0.0] * 3, [0.0] * 3, episodes=2))


# ---- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mt-concat", "mt-additive", "mt-multihead", "mt-film", "mt-pcgrad", "single-task"])
def test_multitask_configs_validate_and_build_a_learner(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.fleet.num_train_tasks <= 10 and cfg.train.meta_batch_size == cfg.fleet.num_train_tasks
    learner = make_learner(POINT_SPEC, cfg.learner.model_copy(update={"device": "cpu"}), point_tasks(10))
    assert learner.policy.spec.conditioning == cfg.learner.conditioning


# ---- learning ------------------------------------------------------------------------------------
def train_tasks(learner, tasks, pool, iterations: int, episodes: int = 4, horizon: int = 12) -> None:
    """The trainer's loop on the fake: the learner's collect plan (support, query), then update."""
    for it in range(iterations):
        drive_iteration(learner, pool, tasks, it, episodes, horizon)


RUNS = {"concat": {"conditioning": "concat"}, "additive": {"conditioning": "additive"},
        "multihead": {"conditioning": "multihead"}, "film": {"conditioning": "film"},
        "params-concat": {"conditioning": "concat", "task_encoding": "params"},
        "pcgrad": {"conditioning": "concat", "pcgrad": True}, "single_task": {"algorithm": "single_task"}}


@pytest.mark.parametrize("run", list(RUNS))
def test_short_training_improves_train_task_return(run):
    tasks = point_tasks(4)
    cfg = LearnerConfig(**{"algorithm": "mtppo", "outer_lr": 0.01, "init_std": 0.5, "ppo_epochs": 3,
                           "device": "cpu", **RUNS[run]})
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, cfg, tasks)
    pool = LocalWorkerPool(1, point_env_factory)
    protocol = point_protocol(tasks, episodes=2, horizon=12, deterministic=True)
    before = evaluate_tasks(learner, pool, protocol)
    train_tasks(learner, tasks, pool, iterations=5)
    after = evaluate_tasks(learner, pool, protocol)
    gains = np.subtract(after.returns, before.returns)
    print(run, np.round(before.returns, 2), np.round(after.returns, 2))
    assert gains.mean() > 1.0 and (gains > 0).sum() >= 3, (before.returns, after.returns)
