"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): before the optimiser step,
each task's gradient is projected onto the normal plane of every other task's gradient it
conflicts with (negative dot product), the other tasks visited in a random order per task.

    >>> optimizer.zero_grad(set_to_none=True)
    >>> pcgrad_backward(params, weighted_task_losses / n, shared_loss=-entropy_coef * entropy)
    >>> clip_grad_norm_(params, max_norm); optimizer.step()

Per-task gradients come from one batched backward pass (vmap over the vector-Jacobian product,
`is_grads_batched`), not a Python loop over tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def per_task_gradients(task_losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gradients of each task loss [N] w.r.t. `params`, flattened: [N, P] (unused params: zeros)."""
    n = task_losses.shape[0]
    eye = torch.eye(n, dtype=task_losses.dtype, device=task_losses.device)
    grads = torch.autograd.grad(task_losses, list(params), grad_outputs=eye, is_grads_batched=True,
                                retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros(n, *p.shape, dtype=p.dtype, device=p.device))
                      .reshape(n, -1) for g, p in zip(grads, params)], dim=1)


def project_conflicting(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's projection of per-task gradients [N, P] -> [N, P].

    For task i, for each other task j in a random order (torch RNG): if g_i' . g_j < 0,
    g_i' <- g_i' - (g_i' . g_j) / |g_j|^2 g_j, with g_j the ORIGINAL gradient of task j (as in the
    paper). The loop runs over visiting positions; all tasks are projected at once at each.
    """
    n = grads.shape[0]
    order = torch.argsort(torch.rand(n, n, generator=generator), dim=1)  # row i: task i's visiting order
    rows = torch.arange(n)
    sq_norms = (grads * grads).sum(1)
    projected = grads.clone()
    for position in range(n):
        others = order[:, position]
        g_other = grads[others]
        dots = (projected * g_other).sum(1)
        conflict = (dots < 0) & (others != rows) & (sq_norms[others] > 0)
        coef = torch.where(conflict, dots / sq_norms[others].clamp_min(1e-30), torch.zeros_like(dots))
        projected = projected - coef.unsqueeze(1) * g_other
    return projected


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The PCGrad update direction: the sum of the projected per-task gradients [N, P] -> [P]."""
    return project_conflicting(grads, generator).sum(0)


def write_grads(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Unflatten [P] into each parameter's `.grad` (added to what is there)."""
    offset = 0
    for p in params:
        g = flat[offset:offset + p.numel()].view_as(p)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += p.numel()


def pcgrad_backward(params: Sequence[torch.Tensor], task_losses: torch.Tensor,
                    shared_loss: torch.Tensor | None = None) -> torch.Tensor:
    """Write PCGrad(grad task_losses) (+ the plain gradient of a task-independent `shared_loss`,
    e.g. the entropy bonus) into `.grad`. With no conflicts this equals backward of the sum.
    Returns the per-task gradients [N, P] (before projection) for diagnostics."""
    params = list(params)
    grads = per_task_gradients(task_losses, params)
    write_grads(params, pcgrad(grads))
    if shared_loss is not None and shared_loss.requires_grad:
        extra = torch.autograd.grad(shared_loss, params, allow_unused=True)
        for p, g in zip(params, extra):
            if g is not None:
                p.grad = p.grad + g
    return grads
