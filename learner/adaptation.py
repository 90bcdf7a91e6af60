"""Functional adaptation on torch.func: phi_i = theta - alpha * grad L_support_i(theta), for all
tasks of a meta-batch at once (vmap), second order by default.

Vocabulary follows learn2learn (`adapt` on a loss), rebuilt on `torch.func` so the inner step
is a pure function of (params, data) that vmap can batch and autograd can differentiate through.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from learner.losses import policy_gradient_loss
from learner.networks import gaussian_log_prob

Params = dict[str, torch.Tensor]
TaskData = dict[str, torch.Tensor]  # obs [E,H,D], actions [E,H,A], logp_old, adv, mask [E,H]


def log_prob(module: nn.Module, params: Params, obs: torch.Tensor, actions: torch.Tensor,
             context: torch.Tensor | None = None) -> torch.Tensor:
    """log pi_params(a|s), with the module's buffers (normaliser) for anything not in params;
    `context` is the task vector of a task-conditioned policy (TaskData key "context")."""
    mean, log_std = functional_call(module, params, (obs,) if context is None else (obs, context))
    return gaussian_log_prob(mean, log_std, actions)


def inner_loss(module: nn.Module, params: Params, data: TaskData) -> torch.Tensor:
    """The support objective: policy gradient with GAE advantages (importance-weighted)."""
    logp = log_prob(module, params, data["obs"], data["actions"], data.get("context"))
    return policy_gradient_loss(logp, data["logp_old"], data["adv"], data["mask"])


def inner_step(
    module: nn.Module, params: Params, data: TaskData, lr: float | Params, first_order: bool = False
) -> Params:
    """One gradient step on one task. `lr` may be per-parameter (Meta-SGD style)."""
    grads = grad(lambda p: inner_loss(module, p, data))(params)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    rates = lr if isinstance(lr, dict) else dict.fromkeys(params, lr)
    return {k: params[k] - rates[k] * grads[k] for k in params}


def adapt_batched(
    module: nn.Module,
    params: Params,
    data: TaskData,
    lr: float | Params,
    steps: int = 1,
    first_order: bool = False,
    per_task_params: bool = False,
) -> Params:
    """Adapt every task of stacked `data` ([N, ...]) in one vmapped call; returns params [N, ...].

    `params` is shared theta (default) or already per-task ([N, ...], `per_task_params=True`).
    `lr` is a scalar or one rate tensor per parameter, shared by all tasks (Meta-SGD).
    Gradients flow back to theta through every inner step unless `first_order`.
    """

    def adapt_one(p: Params, d: TaskData) -> Params:
        for _ in range(steps):
            p = inner_step(module, p, d, lr, first_order)
        return p

    return vmap(adapt_one, in_dims=(0 if per_task_params else None, 0))(params, data)


def batched(fn: Callable, per_task_params: bool = True) -> Callable:
    """vmap a per-task function of (params, data) over the task axis."""
    return vmap(fn, in_dims=(0 if per_task_params else None, 0))


def unstack(params: Params) -> list[Params]:
    """[N, ...]-stacked params -> N per-task dicts."""
    n = next(iter(params.values())).shape[0]
    return [{k: v[i] for k, v in params.items()} for i in range(n)]


def select(data: TaskData, index: torch.Tensor) -> TaskData:
    """The tasks `index` of stacked per-task data."""
    return {k: v[index.to(v.device)] for k, v in data.items()}
