"""Log-probabilities of chosen tokens, and the entropy, from a block of logits, with the backward
pass written out.

For logits z (scaled by 1 / temperature) over V tokens, with lse = logsumexp(z) and p = exp(z - lse):

    log p(token) = z[token] - lse          d log p(token) / dz = onehot(token) - p
    entropy H    = lse - sum(p * z)        dH / dz = -p (log p + H)   (the entropy bonus's gradient)

Autograd through `logsumexp`, the division by the temperature and the float cast runs some fifteen
passes over the (N, V) block for forward and backward, and `torch.softmax` for the entropy more; V
is ~50k, so on a CPU these passes cost more than the output head's matmuls (measured: 0.69 of 0.96 s
for 768 positions of a 49k vocabulary, bf16). Here the forward makes p once, uses it for the entropy
and keeps it for the backward, which is one multiply, a scatter and the cast back (and, only when
the entropy's own gradient is asked for, one more pass over p). The same numbers as autograd's up to
float rounding (tests/test_logprobs.py, tests/test_entropy.py).
"""

from __future__ import annotations

import torch


class _TokenLogp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_NV: torch.Tensor, ids_N: torch.Tensor, temperature: float,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(logits_NV.device.type, enabled=False):  # float32 throughout, whatever the caller's
            return _forward(ctx, logits_NV, ids_N, temperature, with_entropy)

    @staticmethod
    def backward(ctx, grad_N: torch.Tensor | None, grad_entropy_N: torch.Tensor | None):
        p_NV, ids_N, entropy_N = ctx.saved_tensors
        grad_NV = torch.zeros_like(p_NV)
        if grad_N is not None:
            g_N = grad_N.float() / ctx.temperature
            grad_NV = p_NV * -g_N[:, None]
            grad_NV.scatter_add_(-1, ids_N[:, None], g_N[:, None])
        if grad_entropy_N is not None:  # unmaterialised (None) unless the loss uses the entropy
            # p log p as xlogy: 0 where p underflowed to 0, where log p would give 0 * -inf = NaN
            h_N = grad_entropy_N.float() / ctx.temperature
            grad_NV -= h_N[:, None] * (torch.xlogy(p_NV, p_NV) + p_NV * entropy_N[:, None])
        return grad_NV.to(ctx.dtype), None, None, None


def _forward(ctx, logits_NV: torch.Tensor, ids_N: torch.Tensor, temperature: float,
             with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    z_NV = logits_NV.float()
    if temperature != 1.0:
        z_NV = z_NV.div_(temperature) if z_NV is not logits_NV else z_NV / temperature
    lse_N = torch.logsumexp(z_NV, dim=-1)
    logp_N = z_NV.gather(-1, ids_N[:, None])[:, 0] - lse_N
    need_grad = ctx.needs_input_grad[0]
    entropy_N = logp_N.new_zeros(0)
    if with_entropy or need_grad:
        p_NV = (z_NV - lse_N[:, None]).exp_()
        if with_entropy:
            entropy_N = lse_N - torch.linalg.vecdot(p_NV, z_NV)
        if need_grad:
            ctx.save_for_backward(p_NV, ids_N, entropy_N)
    ctx.temperature, ctx.dtype = temperature, logits_NV.dtype
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero (N,) tensors, no pass
    if not with_entropy:
        ctx.mark_non_differentiable(entropy_N)
    return logp_N, entropy_N


def token_logp(logits_NV: torch.Tensor, ids_N: torch.Tensor, temperature: float = 1.0,
               with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(ids_N[n]) under softmax(logits_NV[n] / temperature), float32, differentiable in the
    logits; the entropy of that distribution in nats, differentiable too, or None)."""
    logp_N, entropy_N = _TokenLogp.apply(logits_NV, ids_N, temperature, with_entropy)
    return logp_N, (entropy_N if with_entropy else None)
