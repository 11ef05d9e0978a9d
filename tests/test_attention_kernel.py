"""groupo.models.attention: the update's attention kernel, chosen per block of passes."""

import pytest
import torch
from tiny import make_tiny, nonzero_lora

from groupo.config import LoraConfig
from groupo.models import load_policy_from
from groupo.models.attention import attention_kernel
from groupo.models.logprobs import pack, token_logprobs


class _Wrapper(torch.nn.Module):  # as DDP holds the model
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_the_kernel_is_switched_inside_the_block_and_restored_after_it():
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.0)
    for outer in (model, policy.model, _Wrapper(policy.model)):  # plain, peft, wrapped
        with attention_kernel(outer, "eager"):
            assert model.config._attn_implementation == "eager"
        assert model.config._attn_implementation == "sdpa"
    with pytest.raises(KeyError), attention_kernel(model, "eager"):
        raise KeyError
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match=r"attention kernel 'flash' is unknown; valid: sdpa, eager"), \
            attention_kernel(model, "flash"):
        pass


@pytest.mark.parametrize("share_prompts", [True, False])
def test_eager_and_sdpa_give_the_same_log_probs_and_gradients(share_prompts):
    """The same attention, written out or fused: float32 log-probs within 1e-5 and LoRA gradients
    within 1e-5 of each tensor's largest entry, on left-padded prompts of several lengths with
    shared prompts or not.

    Why that bound: the two kernels sum the same products in different orders (and SDPA's CPU
    kernels differ between AVX2, AVX-512 and AMX builds), so an entry's rounding error scales with
    float32's epsilon (1.2e-7) times the magnitude of the terms summed into it, which are of the
    size of the tensor's largest entries, not of the entry itself: an entry near zero can differ by
    a few epsilons of the largest one (2.4e-7 was seen on an AVX2-only CPU). A wrong mask or
    scale would move entries by a large fraction of that largest entry."""
    torch.manual_seed(0)
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.0)
    nonzero_lora(policy.model, 0.05)
    packed = pack([[5, 6, 7], [5, 6, 7], [8, 9], [20, 21, 22, 23, 24]],
                  [[10, 11, 12], [13], [14, 15, 16, 17], [18]], tok.pad_token_id)
    out = {}
    for kernel in ("sdpa", "eager"):
        policy.model.zero_grad(set_to_none=True)
        with attention_kernel(policy.model, kernel):
            logp, _ = token_logprobs(policy.model, packed, 1.0, share_prompts=share_prompts)
        (logp * packed.completion_mask_BT).sum().backward()
        grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
        out[kernel] = logp.detach(), grads
    (lp_s, g_s), (lp_e, g_e) = out["sdpa"], out["eager"]
    mask = packed.completion_mask_BT.bool()
    assert (lp_s - lp_e)[mask].abs().max() < 1e-5
    assert g_s.keys() == g_e.keys() and len(g_s) == 16
    for n in g_s:
        torch.testing.assert_close(g_e[n], g_s[n], rtol=1e-5, atol=1e-5 * g_s[n].abs().max().item())


def test_the_update_runs_its_kernel_through_the_backward_of_checkpointed_layers():
    """Activation checkpointing recomputes each layer's forward in the backward pass: with the
    eager kernel only around the forward, the recomputation ran SDPA and torch refused the
    mismatch. The update's gradients under eager + checkpointing equal SDPA's without."""
    from groupo.algorithms.presets import get_preset
    from groupo.distributed import Dist
    from groupo.trainer.prepare import PreparedBatch
    from groupo.trainer.settings import UpdateSettings
    from groupo.trainer.update import accumulate_gradients, reduce_metrics

    packed = pack([[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]], [[10, 11, 12], [13], [14, 15, 16, 17], [18]], 0)
    grads, losses = [], []
    for kernel, checkpointing in (("sdpa", False), ("eager", True)):
        torch.manual_seed(0)
        model, tok = make_tiny()
        policy = load_policy_from(model, tok, LoraConfig(rank=4, alpha=8), beta=0.0,
                                  gradient_checkpointing=checkpointing)
        policy.model.train()  # layers checkpoint in training mode only
        nonzero_lora(policy.model, 0.05)
        s = UpdateSettings(loss=get_preset("grpo").with_overrides(beta=0.0), temperature=1.0, micro_batch_size=2,
                           max_len=4, attention=kernel)
        batch = PreparedBatch(packed=packed, adv_B=torch.tensor([1.0, -1.0, 0.5, -0.5]),
                              mask_BT=packed.completion_mask_BT.float())
        losses.append(reduce_metrics(accumulate_gradients(policy.model, batch, s), Dist())["loss"])
        grads.append({n: p.grad for n, p in policy.model.named_parameters() if p.grad is not None})
        assert model.config._attn_implementation == "sdpa"
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)
