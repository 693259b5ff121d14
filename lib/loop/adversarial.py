"""Adversarial training around any micro-batch objective: FGM perturbs the word embeddings, AWP the
weight matrices; a second backward at the perturbed point adds its gradient to the clean one.

Per micro-batch: the inner objective's clean forward and backward -> perturb along the gradient ->
the inner objective's forward and backward again, with the same `WindowShare` (the adversarial loss
is the same share of the window and goes through the same GradScaler) -> restore the weights from a
kept copy, bit-exactly, in a `finally`. The restore comes after the second backward, not before: a
backward that recomputes activations (gradient checkpointing) reads the weights as they are then.
Both objectives return the clean loss, so the logged loss means the same with and without them.

Nothing reads a value back from the device. Whether a perturbation is usable (a gradient that is
zero, or not finite after an fp16 overflow, is not) is a 0-d flag on the device; the second pass
always runs, and where the flag is off it runs unperturbed on a weight-0 batch, adding nothing.
Deciding on the host instead would make it wait for the GPU's queue on every micro-batch.

Under DistributedDataParallel the clean pass runs inside `no_sync()`, so a window still costs one
all-reduce, started by the last micro-batch's adversarial backward and covering every gradient of
the window (clean and adversarial). Every rank takes part in it, a rank with nothing to perturb (a
weight-0 placeholder batch has a zero gradient) through that weight-0 pass.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch.nn.parallel import DistributedDataParallel

from lib.loop.step import BatchObjective, WindowShare


class FGM:
    """Fast gradient method on the word embeddings (Miyato et al. 2017; Goodfellow et al. 2015).

        r = epsilon * g / ||g||_2,   g = d(this micro-batch's clean loss) / d(word embedding matrix)
        gradient += d(the inner loss at E + r) / d(weights), with E restored afterwards

    g is this micro-batch's own gradient on this process, read by a hook during its clean backward,
    not `.grad`, which also holds the window's earlier micro-batches: each micro-batch gets the
    perturbation it would get as a batch of its own, whatever its place in the window and the number
    of micro-batches (the norm of a mixed gradient spreads epsilon over rows this batch never uses).
    g carries the GradScaler's scale; r does not depend on it. When g is zero or not finite (an fp16
    overflow: the scaler skips that step anyway) the adversarial pass adds nothing; when the embeddings
    get no gradient at all (frozen), there is none.
    """

    def __init__(self, inner: BatchObjective, epsilon: float) -> None:
        self.inner, self.epsilon = inner, epsilon

    def backward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], share: WindowShare) -> torch.Tensor:
        weight = _input_embeddings(model).weight
        seen: list[torch.Tensor] = []
        # list.append returns None, so the gradient goes on to `.grad` unchanged
        handle = weight.register_hook(seen.append) if weight.requires_grad else None
        try:
            with _local_backward(model):
                loss = self.inner.backward(model, batch, share)
        finally:
            if handle is not None:
                handle.remove()
        if not seen:
            _perturbed_backward(self.inner, model, batch, share, [], lambda originals: None, usable=None)
            return loss
        grad = seen[0] if len(seen) == 1 else torch.stack(seen).sum(0)
        seen.clear()
        norm = torch.linalg.vector_norm(grad)
        usable = torch.isfinite(norm) & (norm > 0)
        scale = torch.where(usable, self.epsilon / norm, 0.0)
        # an unusable g may hold inf or NaN, which times 0 is NaN: its delta is exactly 0 instead
        delta = _finite_or_zero(grad).mul_(scale)
        del grad
        _perturbed_backward(self.inner, model, batch, share, [weight], lambda originals: weight.add_(delta),
                            usable)
        return loss


class AWP:
    """Adversarial weight perturbation (Wu et al. 2020) in the form Kaggle solutions use, but adding
    to the clean gradient instead of replacing it. For each trainable weight with a gradient and two
    or more dimensions (matrices and embeddings, so never a bias or a LayerNorm weight):

        w' = clamp(w + lr * ||w||_2 * g / ||g||_2,  w - eps * |w|,  w + eps * |w|)   (elementwise)
        gradient += d(the inner loss at every w') / d(weights), with every w restored afterwards

    g is `.grad` after this micro-batch's clean backward: this process's running gradient of the
    window (under DDP not yet all-reduced: the clean pass runs in `no_sync()`). The scaler's
    scale cancels in g / ||g||. A per-micro-batch gradient as FGM uses would need a second copy of
    every weight gradient; since each step's length is fixed by ||w||, only its direction mixes.
    A weight whose gradient or value is all zero is not moved; if any gradient norm is not finite
    (an fp16 overflow) nothing is, and the adversarial pass is skipped.
    """

    def __init__(self, inner: BatchObjective, lr: float, eps: float) -> None:
        self.inner, self.lr, self.eps = inner, lr, eps

    def backward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], share: WindowShare) -> torch.Tensor:
        with _local_backward(model):
            loss = self.inner.backward(model, batch, share)
        params = [p for p in model.parameters()
                  if p.requires_grad and p.ndim >= 2 and p.grad is not None and not p.grad.is_sparse]
        if not params:
            _perturbed_backward(self.inner, model, batch, share, [], lambda originals: None, usable=None)
            return loss
        weight_norms, grad_norms = torch.stack(
            [torch.linalg.vector_norm(t) for p in params for t in (p.detach(), p.grad)]).view(-1, 2).unbind(1)
        movable = torch.isfinite(grad_norms).all() & (weight_norms > 0) & (grad_norms > 0)
        steps = torch.where(movable, self.lr * weight_norms / grad_norms, 0.0)  # 0: this weight stays

        def move(originals: list[torch.Tensor]) -> None:
            for p, original, step in zip(params, originals, steps.unbind()):
                bound = original.abs().mul_(self.eps)
                p.add_(_finite_or_zero(p.grad).mul_(step).clamp_(min=-bound, max=bound))

        _perturbed_backward(self.inner, model, batch, share, params, move, movable.any())
        return loss


def _perturbed_backward(inner: BatchObjective, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                        share: WindowShare, params: list[torch.nn.Parameter],
                        perturb: Callable[[list[torch.Tensor]], None], usable: torch.Tensor | None) -> None:
    """The inner objective's backward after `perturb(copies of params)` moved `params`, at the batch's
    weight where the 0-d flag `usable` is set and at weight 0 elsewhere (`perturb` then moves nothing);
    then every one of them is copied back from its copy, even when the pass raises.

    `usable=None`: there is nothing to perturb, known on the host (no gradient reached the weights),
    and the pass runs only where DDP needs this rank in the window's all-reduce."""
    if usable is None:
        ddp = _ddp(model)
        if ddp is not None and ddp.require_backward_grad_sync:
            # the other ranks' adversarial backward starts the window's all-reduce: join it with nothing
            inner.backward(model, {**batch, "weight": batch.get("weight", 1.0) * 0.0}, share)
        return
    weight = torch.where(usable, batch.get("weight", 1.0), 0.0)  # a number goes in as a kernel argument, no copy
    originals = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            perturb(originals)
        # inside an enclosing autocast the bf16/fp16 copies of the weights are cached and would not
        # see the perturbation (nor, afterwards, the restore)
        torch.clear_autocast_cache()
        inner.backward(model, {**batch, "weight": weight}, share)
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals):
                p.copy_(original)
        torch.clear_autocast_cache()


def _finite_or_zero(tensor: torch.Tensor) -> torch.Tensor:
    """A copy with every inf and NaN set to 0 (on a finite tensor, the tensor's values)."""
    return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)


def _ddp(model: torch.nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper, also under torch.compile's (which holds it as a submodule)."""
    return next((m for m in model.modules() if isinstance(m, DistributedDataParallel)), None)


def _local_backward(model: torch.nn.Module) -> ContextManager:
    ddp = _ddp(model)
    return ddp.no_sync() if ddp is not None else contextlib.nullcontext()


def _input_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The word embeddings of the model under any DDP / torch.compile wrappers."""
    for module in model.modules():
        if hasattr(module, "get_input_embeddings"):
            return module.get_input_embeddings()
    raise TypeError(f"FGM: {type(model).__name__} has no get_input_embeddings()")
