r"""Chunked CPU kernels for the sigmoid focal loss.

On a CPU, a full-size temporary costs more than the arithmetic done on it: allocating and filling
64 MiB takes longer than one ``exp`` over the same 16 M values. The kernels below therefore walk
the flattened input in chunks of :data:`CHUNK_ELEMENTS` values, write every intermediate into a few
chunk-sized buffers (which stay in cache), and allocate nothing full-size except what the caller
gets back: the gradient, and for the element-wise form the per-element losses and p_t. The summed
form never materializes per-element losses at all.

Threads: a chunk is smaller than torch's intra-op grain size, so torch computes each operation on
it on the calling thread; the chunks are shared out over ``torch.get_num_threads()`` Python threads
(torch releases the GIL while it computes), each taking the next chunk when done with one. Had each
operation been split over torch's OpenMP threads instead, every one of the thousands of operations
would end at a barrier, and on a machine whose cores are shared with other processes a barrier
waits for a descheduled thread (`benchmarks/RESULTS.md` has what that cost here).

For hard targets (every value 0 or 1, checked chunk by chunk) the loss is a function of one number,
:math:`z = x (1 - 2t)`: then :math:`1 - p_t = \sigma(z)` and :math:`\mathrm{BCE} = \mathrm{softplus}(z)`,
both exact in floating point (no ``1 - p`` cancellation, no log of a probability), and

.. math::
    \ell = \alpha_t\, \sigma(z)^\gamma\, \mathrm{softplus}(z), \qquad
    \frac{\partial \ell}{\partial x} = \alpha_t (1 - 2t)\, \sigma(z)^\gamma
        \bigl[\sigma(z) + \gamma\, \sigma(-z)\, \mathrm{softplus}(z)\bigr],

where every factor is finite for every :math:`\gamma \ge 0` (no :math:`(1-p_t)^{\gamma - 1}`).
Chunks with soft targets use the general closed form (:func:`binary_focal_forward`,
:func:`binary_focal_grad`) on the chunk. Half-precision inputs are converted chunk by chunk and
computed in float32. A double backward (``create_graph=True``) takes the whole-tensor,
differentiable :func:`binary_focal_grad`.

The gradient is computed in forward, when the input requires grad and grad mode is on: each
chunk's intermediates are then computed once, while in cache, and the inputs are read once;
backward only scales the gradient by the incoming one, in place. The gradient tensor is the one
backward would allocate anyway, allocated earlier. Half-precision inputs (whose gradient would be
rounded twice) and a second backward of a retained graph compute it in backward, with the same
operations, so both give the same bits.

The kernels run in eager mode on CPU tensors. While ``torch.compile`` traces, under ``torch.func``
transforms (whose wrapped tensors have no storage to chunk, and which cannot see through the
worker threads), and on other devices, the callers use :class:`BinaryFocal`, a whole-tensor closed
form that the compiler fuses and that ``grad`` and ``vmap`` transform. The chunked Functions keep the
``forward(ctx, ...)`` form: their forward decides what to keep for backward (the gradient it
computed, each chunk's target kind), which the ``setup_context`` form has no place for, and they
never run under a transform.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lossplug.shared_checks import check_probability_target, is_traced

#: Elements per chunk: just below torch's intra-op grain size (32768), so that torch runs every
#: operation on a chunk on the thread that calls it, and a multiple of 16 (chunks start 64-byte
#: aligned). 128 KiB of float32 per buffer: a chunk's buffers stay in the L2 cache.
CHUNK_ELEMENTS = 32704

_T = TypeVar("_T")

_softplus_out: Callable[..., Tensor] = torch._C._nn.softplus  # F.softplus, with out=


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs; float32 and float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def use_chunked_kernel(input: Tensor) -> bool:
    """Whether the chunked kernels apply: a CPU tensor in eager mode (not traced, see :func:`is_traced`)."""
    return input.device.type == "cpu" and not is_traced()


def alpha_coefficients(alpha: float | None) -> tuple[float, float]:
    r""":math:`(a_0, a_1)` with :math:`\alpha_t = a_0 + a_1 t`: :math:`(1 - \alpha, 2\alpha - 1)`, or :math:`(1, 0)` without alpha."""
    return (1.0, 0.0) if alpha is None else (1.0 - alpha, 2.0 * alpha - 1.0)


# --- the general closed form, for soft targets and as the whole-tensor path ----------------------


def binary_focal_forward(input: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
    """Element-wise :math:`\\alpha_t (1 - p_t)^\\gamma \\mathrm{BCE}(x, t)` for any targets in [0, 1]."""
    one_minus_p_t = target * torch.sigmoid(-input) + (1 - target) * torch.sigmoid(input)
    loss = one_minus_p_t.pow(gamma) * F.binary_cross_entropy_with_logits(input, target, reduction="none")
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def binary_focal_grad(input: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""d/dx of :math:`\alpha_t (1-p_t)^\gamma \mathrm{BCE}(x, t)`, differentiable (for double backward).

    With :math:`q = 1 - p_t = t\,\sigma(-x) + (1-t)\,\sigma(x)`, :math:`dq/dx = (1-2t)\,\sigma(x)\sigma(-x)`
    and :math:`d(q^\gamma)/dx = \gamma q^\gamma (1-2t)\, \sigma(x)\sigma(-x)/q`, whose last factor is
    in [0, 1] for targets in [0, 1]; written that way it is finite where q underflows to 0.
    """
    sig, sig_neg = torch.sigmoid(input), torch.sigmoid(-input)
    one_minus_p_t = target * sig_neg + (1 - target) * sig
    modulation = one_minus_p_t.pow(gamma)
    grad = modulation * (sig - target)
    if gamma != 0:
        positive = one_minus_p_t > 0
        safe = torch.where(positive, one_minus_p_t, torch.ones_like(one_minus_p_t))
        ratio = torch.where(positive, sig * sig_neg / safe, torch.zeros_like(safe))
        bce = F.binary_cross_entropy_with_logits(input, target, reduction="none")
        grad = grad + gamma * modulation * (1 - 2 * target) * ratio * bce
    if alpha is not None:
        grad = grad * (alpha * target + (1 - alpha) * (1 - target))
    return grad


def binary_probability_of_target(input: Tensor, target: Tensor) -> Tensor:
    """p_t = p t + (1 - p)(1 - t) with p = sigmoid(input), without cancellation; detached."""
    with torch.no_grad():
        return target * torch.sigmoid(input) + (1 - target) * torch.sigmoid(-input)


class BinaryFocal(torch.autograd.Function):
    """Element-wise sigmoid focal loss on whole tensors; saves only its inputs, recomputes in backward.

    The path for ``torch.compile`` (which fuses it into one loop), ``torch.func`` transforms and
    non-CPU devices. Written in the ``setup_context`` form with a generated vmap rule, so that
    ``torch.func.grad`` and ``vmap`` (per-sample gradients) go through its closed-form gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
        return binary_focal_forward(input, target, gamma, alpha)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, target, gamma, alpha = inputs
        ctx.save_for_backward(input, target)
        ctx.gamma, ctx.alpha = gamma, alpha

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        input, target = ctx.saved_tensors
        return grad_output * binary_focal_grad(input, target, ctx.gamma, ctx.alpha), None, None, None


# --- the chunked kernels ---------------------------------------------------------------------------


class _Plan:
    """The flattened input and target of a chunked call, and the dtype the chunks are computed in."""

    def __init__(self, input: Tensor, target: Tensor, chunk: int | None = None) -> None:
        self.input = input.reshape(-1)
        self.target = target.reshape(-1)
        self.dtype = torch.promote_types(compute_dtype(input.dtype), compute_dtype(target.dtype))
        self.total = self.input.numel()
        self.chunk = CHUNK_ELEMENTS if chunk is None else chunk  # backward chunks exactly as forward did
        self.count = -(-self.total // self.chunk)


class _Workspace:
    """One worker's chunk-sized buffers: five scratch buffers, and conversion buffers for half inputs."""

    def __init__(self, plan: _Plan) -> None:
        self.size = min(plan.chunk, plan.total)
        self.buffers = [torch.empty(self.size, dtype=plan.dtype) for _ in range(5)]
        self.convert = [
            torch.empty(self.size, dtype=plan.dtype) if t.dtype != plan.dtype else None
            for t in (plan.input, plan.target)
        ]

    def load(self, plan: _Plan, index: int) -> tuple[int, int, Tensor, Tensor, list[Tensor]]:
        """``(start, stop, x, t, buffers)`` of chunk ``index``, with ``x`` and ``t`` in the compute dtype."""
        start = index * plan.chunk
        stop = min(start + plan.chunk, plan.total)
        size = stop - start
        x, t = plan.input[start:stop], plan.target[start:stop]
        if self.convert[0] is not None:
            x = self.convert[0][:size].copy_(x)
        if self.convert[1] is not None:
            t = self.convert[1][:size].copy_(t)
        buffers = self.buffers if size == self.size else [buffer[:size] for buffer in self.buffers]
        return start, stop, x, t, buffers


_executor: ThreadPoolExecutor | None = None
_executor_key: tuple[int, int] = (0, 0)  # (process id, workers): a forked child makes its own
_executor_lock = threading.Lock()


def _threads(workers: int) -> ThreadPoolExecutor:
    global _executor, _executor_key
    with _executor_lock:
        if _executor is None or _executor_key[0] != os.getpid() or _executor_key[1] < workers:
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lossplug-chunks")
            _executor_key = (os.getpid(), workers)
        return _executor


def _map_chunks(plan: _Plan, compute: Callable[[int, int, int, Tensor, Tensor, list[Tensor]], _T]) -> list[_T]:
    """``compute(index, start, stop, x, t, buffers)`` for every chunk, on ``torch.get_num_threads()`` threads.

    The calling thread works too. Each thread takes the next chunk when done with one, so a thread
    that the OS schedules out holds up one chunk, never the others. Results come back in chunk
    order, so sums over them are added in a fixed order (deterministic).
    """
    results: list[Any] = [None] * plan.count
    indices = itertools.count()  # next() on it is atomic under the GIL
    inference = torch.is_inference_mode_enabled()  # per thread, like grad mode: the callers' outputs may need it

    def work() -> None:
        workspace = _Workspace(plan)
        # grad mode is per thread; these are out= and in-place operations
        with torch.inference_mode(inference), torch.no_grad():
            for index in iter(indices.__next__, None):
                if index >= plan.count:
                    return
                results[index] = compute(index, *workspace.load(plan, index))

    helpers = min(torch.get_num_threads(), plan.count) - 1
    futures = [_threads(helpers).submit(work) for _ in range(helpers)] if helpers > 0 else []
    try:
        work()
    finally:
        for future in futures:
            future.result()  # waits for every thread, and re-raises its error
    return results


def _target_kind(t: Tensor, scratch: Tensor) -> int:
    """HARD when every target of the chunk is 0 or 1, SOFT when all are in [0, 1], else OUT_OF_RANGE.

    With every value in [0, 1], each :math:`t - t^2` is non-negative (also after rounding) and zero
    only at 0 and 1, so their sum is zero exactly when every target is hard: no cancellation, and a
    nonzero term cannot round away. NaN is out of range, as in the argument check
    (:func:`~lossplug.shared_checks.check_probability_target`); ``aminmax`` propagates it, and both
    comparisons below are false for it. Out-of-range chunks are computed with the general closed form,
    as soft ones (what ``validate_args=False`` gets).
    """
    low, high = (value.item() for value in torch.aminmax(t))
    if not (low >= 0 and high <= 1):
        return _OUT_OF_RANGE
    residual = torch.addcmul(t, t, t, value=-1.0, out=scratch)
    return _HARD if residual.sum().item() == 0 else _SOFT


_HARD, _SOFT, _OUT_OF_RANGE = 0, 1, 2


def _modulate_(q: Tensor, gamma: float) -> Tensor:
    """q**gamma in place (q >= 0)."""
    if gamma == 2:
        return q.mul_(q)
    if gamma != 1:
        q.pow_(gamma)
    return q


def _hard_chunk(
    x: Tensor,
    t: Tensor,
    gamma: float,
    buffers: list[Tensor],
    grad_out: tuple[Tensor, float, float] | None = None,
    p_t_out: Tensor | None = None,
) -> Tensor:
    """For hard targets: the loss without alpha, sigma(z)^gamma softplus(z) (in a buffer).

    With ``grad_out = (out, a0, a1)`` also writes d loss / dx, alpha included, to ``out``; with
    ``p_t_out``, writes p_t = sigma(-z) there.
    """
    z, q, loss, work = buffers[:4]
    torch.addcmul(x, t, x, value=-2.0, out=z)  # x (1 - 2t), exact for t in {0, 1}
    _softplus_out(z, 1, 20, out=loss)
    torch.sigmoid(z, out=q)
    dz = q  # d loss / dz for gamma = 0
    if grad_out is not None or p_t_out is not None:
        p_t = torch.neg(z, out=z if p_t_out is None else p_t_out).sigmoid_()  # sigma(-z), exact near p_t = 0
        if grad_out is not None and gamma != 0:
            dz = torch.addcmul(q, p_t, loss, value=gamma, out=work)  # sigma(z) + gamma sigma(-z) softplus(z)
    if gamma != 0:
        modulation = _modulate_(q, gamma)
        loss.mul_(modulation)
        if grad_out is not None:
            dz.mul_(modulation)
    if grad_out is not None:
        out, a0, a1 = grad_out
        torch.mul(dz, a0, out=out)  # alpha_t (1 - 2t) = a0 - (2 a0 + a1) t for t in {0, 1}
        out.addcmul_(t, dz, value=-(2 * a0 + a1))
    return loss


def _alpha_weighted_sum(loss: Tensor, t: Tensor, a0: float, a1: float) -> float:
    r""":math:`\sum (a_0 + a_1 t)\, \ell`, overwriting ``loss``; no BLAS ``dot`` (it may start threads of its own)."""
    if a1 == 0:
        return a0 * loss.sum().item()
    if a0 == 0:
        return a1 * loss.mul_(t).sum().item()
    return a0 * torch.addcmul(loss, t, loss, value=a1 / a0, out=loss).sum().item()


def _scalar_grad(grad_output: Tensor) -> float | None:
    """The value of a gradient that is one scalar broadcast over every element (after a sum), else None."""
    if grad_output.ndim == 0 or (grad_output.numel() > 0 and all(s == 0 for s in grad_output.stride())):
        return float(grad_output[(0,) * grad_output.ndim])
    return None


def _chunked_grad(
    input: Tensor,
    target: Tensor,
    gamma: float,
    alpha: float | None,
    grad_output: Tensor,
    kinds: list[int],
    chunk: int,
) -> Tensor:
    """d loss / d input times ``grad_output`` (a scalar for the summed loss, else element-wise).

    Computed as forward computes it and then scaled, so both give the same bits (backward is
    reentrant, as ``gradcheck`` checks).
    """
    a0, a1 = alpha_coefficients(alpha)
    scalar = _scalar_grad(grad_output)
    flat_grad_output = None if scalar is not None else grad_output.reshape(-1)
    grad = torch.empty(input.shape, dtype=input.dtype)
    flat_grad = grad.view(-1)
    plan = _Plan(input, target, chunk)

    def compute(index: int, start: int, stop: int, x: Tensor, t: Tensor, buffers: list[Tensor]) -> None:
        out = flat_grad[start:stop]
        work = out if out.dtype == x.dtype else buffers[4]
        if kinds[index] == _HARD:
            _hard_chunk(x, t, gamma, buffers, (work, a0, a1))
        else:
            work.copy_(binary_focal_grad(x, t, gamma, alpha))
        if flat_grad_output is not None:
            work.mul_(flat_grad_output[start:stop])
        elif scalar is not None and scalar != 1:
            work.mul_(scalar)
        if work is not out:
            out.copy_(work)

    _map_chunks(plan, compute)
    return grad


def _saved_grad(ctx: Any, grad_output: Tensor) -> Tensor:
    """The input gradient of either chunked Function: the one its forward computed, scaled in place
    (once: a second backward of a retained graph computes it again), or computed here."""
    input, target = ctx.saved_tensors
    precomputed, ctx.precomputed_grad = ctx.precomputed_grad, None
    if torch.is_grad_enabled():  # double backward: a differentiable whole-tensor gradient
        dtype = compute_dtype(input.dtype)
        grad = binary_focal_grad(input.to(dtype), target.to(dtype), ctx.gamma, ctx.alpha)
        return (grad_output * grad).to(input.dtype)
    if precomputed is None:
        return _chunked_grad(input, target, ctx.gamma, ctx.alpha, grad_output, ctx.kinds, ctx.chunk)
    scalar = _scalar_grad(grad_output)
    if scalar is None:
        return precomputed.mul_(grad_output)
    return precomputed if scalar == 1 else precomputed.mul_(scalar)


def _gradient_buffer(ctx: Any, input: Tensor, plan: _Plan, grad_enabled: bool) -> Tensor | None:
    """The input gradient's tensor, when forward computes it (see the classes below), else None.

    ``grad_enabled`` is the caller's grad mode (forward itself runs without it, and
    ``needs_input_grad`` does not say whether a graph is being recorded).
    """
    if grad_enabled and ctx.needs_input_grad[0] and input.dtype == plan.dtype:
        return torch.empty(input.shape, dtype=input.dtype)
    return None


def _check_kinds(kinds: list[int], input: Tensor, target: Tensor, validate: bool) -> None:
    """Raise the argument check's error when a chunk had targets outside [0, 1] (and ``validate``)."""
    if validate and _OUT_OF_RANGE in kinds:
        check_probability_target(input, target, validate_args=True)  # reports the first bad value


class BinaryFocalSum(torch.autograd.Function):
    """The summed sigmoid focal loss, chunked: no per-element loss or p_t is ever materialized.

    When the input requires grad, forward also computes the gradient of the sum, chunk by chunk
    while the chunk's intermediates are in cache, and backward only scales it by the incoming
    gradient (once, in place): every intermediate is computed once and the input is read once. The
    gradient tensor is the one backward would have allocated anyway. (Half-precision inputs, whose
    gradient would be rounded twice, recompute it in backward instead.) Validates the targets on
    the way (``validate=True``) at no extra pass over them.
    """

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, target: Tensor, gamma: float, alpha: float | None, validate: bool, grad_enabled: bool
    ) -> Tensor:
        ctx.save_for_backward(input, target)
        ctx.gamma, ctx.alpha = gamma, alpha
        a0, a1 = alpha_coefficients(alpha)
        plan = _Plan(input, target)
        grad = _gradient_buffer(ctx, input, plan, grad_enabled)
        flat_grad = None if grad is None else grad.view(-1)

        def compute(
            index: int, start: int, stop: int, x: Tensor, t: Tensor, buffers: list[Tensor]
        ) -> tuple[int, float]:
            kind = _target_kind(t, buffers[0])
            if kind != _HARD:
                if flat_grad is not None:
                    flat_grad[start:stop].copy_(binary_focal_grad(x, t, gamma, alpha))
                return kind, float(binary_focal_forward(x, t, gamma, alpha).sum())
            grad_out = None if flat_grad is None else (flat_grad[start:stop], a0, a1)
            loss = _hard_chunk(x, t, gamma, buffers, grad_out)
            return kind, _alpha_weighted_sum(loss, t, a0, a1)

        results = _map_chunks(plan, compute)
        ctx.kinds, ctx.chunk, ctx.precomputed_grad = [kind for kind, _ in results], plan.chunk, grad
        _check_kinds(ctx.kinds, input, target, validate)
        return torch.tensor(math.fsum(total for _, total in results), dtype=plan.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        return _saved_grad(ctx, grad_output), None, None, None, None, None


class BinaryFocalElementwise(torch.autograd.Function):
    """Element-wise sigmoid focal loss and (optionally) p_t, chunked; the two outputs are full-size.

    Returns ``(loss, p_t)`` in the compute dtype; ``p_t`` is detached, and empty when not asked for.
    Unlike :class:`BinaryFocalSum`, it computes the gradient in backward: its forward already makes
    two full-size outputs, and a gradient made in forward as well would add a third to the peak
    memory whenever the caller drops them before backward (as a training step does).
    """

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, target: Tensor, gamma: float, alpha: float | None, validate: bool, with_p_t: bool
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(input, target)
        ctx.gamma, ctx.alpha = gamma, alpha
        a0, a1 = alpha_coefficients(alpha)
        plan = _Plan(input, target)
        loss_out = torch.empty(input.shape, dtype=plan.dtype)
        p_t_out = torch.empty(input.shape if with_p_t else (0,), dtype=plan.dtype)
        flat_loss, flat_p_t = loss_out.view(-1), p_t_out.view(-1)

        def compute(index: int, start: int, stop: int, x: Tensor, t: Tensor, buffers: list[Tensor]) -> int:
            out = flat_loss[start:stop]
            kind = _target_kind(t, buffers[0])
            if kind != _HARD:
                out.copy_(binary_focal_forward(x, t, gamma, alpha))
                if with_p_t:
                    flat_p_t[start:stop].copy_(binary_probability_of_target(x, t))
                return kind
            loss = _hard_chunk(x, t, gamma, buffers, p_t_out=flat_p_t[start:stop] if with_p_t else None)
            torch.mul(loss, a0, out=out)
            if a1 != 0:
                out.addcmul_(t, loss, value=a1)
            return kind

        ctx.kinds, ctx.chunk, ctx.precomputed_grad = _map_chunks(plan, compute), plan.chunk, None
        _check_kinds(ctx.kinds, input, target, validate)
        ctx.mark_non_differentiable(p_t_out)
        ctx.set_materialize_grads(False)
        return loss_out, p_t_out

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor | None, _grad_p_t: Tensor | None
    ) -> tuple[Tensor | None, None, None, None, None, None]:
        if grad_output is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        return _saved_grad(ctx, grad_output), None, None, None, None, None
