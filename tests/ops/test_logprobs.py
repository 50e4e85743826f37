import math

import pytest
import torch

from rlhf_lightning.ops import logprobs_from_logits, token_logprobs_from_hidden
from tests.memory import PeakTensorMemory


def _reference(hidden, weight, targets, temperature=1.0):
    logits = (hidden @ weight.T).float() / temperature
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return lp, entropy


def test_logprobs_from_logits_hand_computed():
    # logits [0, ln 3] -> probabilities 1/4, 3/4
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # T = 2 halves the logits: [0, ln 3 / 2] -> p(0) = 1 / (1 + sqrt 3)
    assert logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0).item() == pytest.approx(
        -math.log(1 + math.sqrt(3.0))
    )


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_log_softmax(chunk_size, temperature):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=g)
    weight = torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    out = token_logprobs_from_hidden(
        hidden, weight, targets, temperature=temperature, chunk_size=chunk_size, with_entropy=True
    )
    ref_lp, ref_ent = _reference(hidden, weight, targets, temperature)
    torch.testing.assert_close(out.logprobs, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy, ref_ent, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.logprobs, logprobs_from_logits(hidden @ weight.T, targets, temperature), atol=1e-5, rtol=0
    )


def test_a_logit_scale_multiplies_the_heads_output_before_the_softmax():
    # hidden 1, head rows [0], [ln 3]: logits [0, ln 3]; scale 2 -> [0, 2 ln 3] -> p(1) = 9 / 10
    hidden, weight = torch.ones(1, 1, 1), torch.tensor([[0.0], [math.log(3.0)]])
    out = token_logprobs_from_hidden(hidden, weight, torch.tensor([[1]]), logit_scale=2.0, with_entropy=True)
    assert out.logprobs.item() == pytest.approx(math.log(0.9))
    assert out.entropy.item() == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    # at T = 0.5 and scale 1/4 the logits are halved: [0, ln 3 / 2] -> p(0) = 1 / (1 + sqrt 3)
    out = token_logprobs_from_hidden(hidden, weight, torch.tensor([[0]]), temperature=0.5, logit_scale=0.25)
    assert out.logprobs.item() == pytest.approx(-math.log(1 + math.sqrt(3.0)))
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        token_logprobs_from_hidden(hidden, weight, torch.tensor([[0]]), logit_scale=0.0)


def test_mask_skips_positions_and_returns_zero_there():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 8, generator=g)
    weight = torch.randn(11, 8, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    mask = torch.tensor([[False, True, True, False, True], [True, False, False, False, False]])
    out = token_logprobs_from_hidden(hidden, weight, targets, mask=mask, chunk_size=2).logprobs
    ref, _ = _reference(hidden, weight, targets)
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=0)
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("with_entropy", [False, True])
def test_gradients_match_the_reference(with_entropy):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, 8, generator=g, requires_grad=True)
    weight = torch.randn(13, 8, generator=g, requires_grad=True)
    bias = torch.randn(13, generator=g, requires_grad=True)
    targets = torch.randint(0, 13, (2, 6), generator=g)
    mask = torch.rand(2, 6, generator=g) > 0.3
    coef = torch.randn(2, 6, generator=g)  # a different upstream gradient for every position
    out = token_logprobs_from_hidden(
        hidden, weight, targets, bias=bias, mask=mask, chunk_size=3, temperature=0.7, with_entropy=with_entropy
    )
    loss = (
        (coef * out.logprobs).sum() + (0.3 * coef * out.entropy).sum() if with_entropy else (coef * out.logprobs).sum()
    )
    loss.backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]

    for t in (hidden, weight, bias):
        t.grad = None
    logp = torch.log_softmax((hidden @ weight.T + bias) / 0.7, -1)
    ref_lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    ref_loss = (coef * ref_lp * mask).sum()
    if with_entropy:
        ref_loss = ref_loss + (0.3 * coef * -(logp.exp() * logp).sum(-1) * mask).sum()
    ref_loss.backward()
    for got, t in zip(grads, (hidden, weight, bias)):
        torch.testing.assert_close(got, t.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("used", ["logprobs", "entropy"])
def test_an_output_the_loss_does_not_use_adds_nothing_to_the_gradient(used):
    # the PPO update logs the entropy of its first pass without training on it (entropy_coef 0), and an
    # entropy-only loss must not see a logprob gradient
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    weight = torch.randn(11, 8, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    coef = torch.randn(2, 5, generator=g)
    grads = []
    for with_entropy in (True, False) if used == "logprobs" else (True,):
        hidden.grad = None
        out = token_logprobs_from_hidden(hidden, weight, targets, chunk_size=4, with_entropy=with_entropy)
        (coef * (out.logprobs if used == "logprobs" else out.entropy)).sum().backward()
        grads.append(hidden.grad.clone())
    if used == "logprobs":
        torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
    else:
        logp = torch.log_softmax(hidden @ weight.T, -1)
        hidden.grad = None
        (coef * -(logp.exp() * logp).sum(-1)).sum().backward()
        torch.testing.assert_close(grads[0], hidden.grad, atol=1e-5, rtol=1e-4)


def _peak_bytes(vocab: int, chunked: bool) -> int:
    g = torch.Generator().manual_seed(0)
    b, t, d, chunk = 4, 256, 32, 64
    hidden = torch.randn(b, t, d, generator=g, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g) * 0.1
    targets = torch.randint(0, vocab, (b, t), generator=g)
    with PeakTensorMemory() as tracker:
        if chunked:
            lp = token_logprobs_from_hidden(hidden, weight, targets, chunk_size=chunk).logprobs
        else:
            lp = logprobs_from_logits(hidden @ weight.T, targets)
        lp.sum().backward()
    return tracker.peak


def test_chunked_peak_memory_does_not_grow_with_vocab_beyond_one_chunk():
    chunk_logits_bytes = 64 * 4  # one float32 row of logits per position in a chunk, per vocab entry
    small, large = 4_000, 32_000
    chunked_growth = _peak_bytes(large, chunked=True) - _peak_bytes(small, chunked=True)
    full_growth = _peak_bytes(large, chunked=False) - _peak_bytes(small, chunked=False)
    # One chunk's float32 logits and one companion (its softmax, turned into the gradient in place).
    assert chunked_growth <= 2.5 * chunk_logits_bytes * (large - small)
    # The full path grows with the whole batch: (4 * 256) positions x vocab x 4 bytes, several times over.
    assert full_growth >= 4 * 256 * 4 * (large - small)
    assert chunked_growth * 4 < full_growth
