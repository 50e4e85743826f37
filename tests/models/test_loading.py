import pytest
import torch
from torch import nn

from rlhf_lightning.models import (
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    decoder_and_head,
    final_hidden_states,
    generate,
    load_causal_lm,
    load_tokenizer,
)
from rlhf_lightning.models.loading import output_head
from rlhf_lightning.models.tiny import build_char_tokenizer, build_tiny_model


def test_pad_equal_to_eos_is_replaced_by_a_distinct_token(tmp_path):
    tok = build_char_tokenizer()
    tok.pad_token = tok.eos_token  # as SmolLM2 ships
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "<|endoftext|>" and loaded.pad_token_id != loaded.eos_token_id


def test_dropout_is_disabled_in_config_and_modules(tmp_path):
    folder = build_tiny_model(tmp_path, "gpt2")  # GPT-2 configs default to 0.1 dropout everywhere
    model = load_causal_lm(ModelConfig(name_or_path=str(folder)), LoraConfig(dropout=0.0))
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    model.train()
    ids = torch.randint(0, 90, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    kept = load_causal_lm(ModelConfig(name_or_path=str(folder), disable_dropout=False), LoraConfig())
    assert any(m.p > 0 for m in kept.modules() if isinstance(m, nn.Dropout))


def test_an_adapter_loaded_from_a_folder_has_its_dropout_off(tiny_llama, tmp_path):
    from tests.helpers import make_run_folder

    folder = make_run_folder(tiny_llama, tmp_path / "sft", "sft", 1, dropout=0.1)  # as TRL recipes save them
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama, adapter=str(folder)), None).train()
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and set(dropouts) == {0.0}
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids).logits, model(ids).logits, rtol=0, atol=0)  # train mode, same result
    kept = load_causal_lm(ModelConfig(name_or_path=tiny_llama, adapter=str(folder), disable_dropout=False), None)
    assert {m.p for m in kept.modules() if isinstance(m, nn.Dropout)} == {0.1}


def test_saving_a_checkpoint_leaves_4bit_weights_exactly_as_they_were(tiny_llama):
    # bitsandbytes repacks CPU 4-bit weights at the first inference pass and unpacks them in state_dict()
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama, quantization="nf4"), LoraConfig(r=4)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        before = model(ids).logits
        model.state_dict()
        after = model(ids).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("arch", ["tiny_gpt2", "tiny_llama"])
def test_left_and_right_padding_give_the_same_hidden_states(arch, request):
    model = load_causal_lm(ModelConfig(name_or_path=request.getfixturevalue(arch)), LoraConfig())
    decoder, _ = decoder_and_head(model)
    seq = [5, 9, 13, 17, 21]
    right = torch.tensor([seq + [0, 0, 0]]), torch.tensor([[1] * 5 + [0] * 3])
    left = torch.tensor([[0, 0, 0] + seq]), torch.tensor([[0] * 3 + [1] * 5])
    with torch.no_grad():
        h_right = final_hidden_states(decoder, *right)[0, :5]
        h_left = final_hidden_states(decoder, *left)[0, 3:]
        h_alone = final_hidden_states(decoder, torch.tensor([seq]), torch.ones(1, 5, dtype=torch.long))[0]
    torch.testing.assert_close(h_right, h_alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h_left, h_alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_lora_trains_a_step_on_cpu(tiny_llama, quantization):
    import bitsandbytes as bnb

    from rlhf_lightning.ops import token_logprobs_from_hidden

    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama, quantization=quantization), LoraConfig(r=4))
    layer = bnb.nn.Linear4bit if quantization == "nf4" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, layer) for m in model.modules())
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    decoder, _ = decoder_and_head(model)
    head = output_head(model)
    weight, bias = head.weight, head.bias
    ids = torch.randint(4, 90, (2, 16))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        hidden = final_hidden_states(decoder, ids, torch.ones_like(ids))
        loss = -token_logprobs_from_hidden(hidden[:, :-1], weight, ids[:, 1:], bias=bias).logprobs.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert changed, "the LoRA weights did not move"
    assert losses[1] < losses[0]


def test_quantized_model_refuses_full_fine_tuning(tiny_llama):
    with pytest.raises(ValueError, match="enable LoRA"):
        load_causal_lm(ModelConfig(name_or_path=tiny_llama, quantization="nf4"), LoraConfig(enabled=False))


def test_lora_on_the_lm_head_is_refused_with_a_hint(tiny_llama):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        output_head(model)


class _ScriptedLM(nn.Module):
    """Stands in for a causal LM whose ``generate`` appends fixed continuations."""

    def __init__(self, continuations):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.continuations = torch.tensor(continuations)
        self.seen = None
        self.generation_config = None  # the model's own settings: set aside while sampling

    def generate(self, input_ids, attention_mask, **kwargs):
        self.seen = (input_ids, attention_mask, kwargs)
        return torch.cat([input_ids, self.continuations], dim=1)


def test_responses_end_at_their_first_stop_token():
    eos, eot = 2, 3
    lm = _ScriptedLM([[7, eos, 8, eos], [9, 9, 9, 9], [eot, 5, 5, 5]])
    lm.train()
    out = generate(lm, [[1, 2, 3], [4], [5, 6]], GenerationConfig(max_new_tokens=4), [eos, eot], pad_token_id=0)
    assert out == [[7, eos], [9, 9, 9, 9], [eot]]
    input_ids, attention_mask, kwargs = lm.seen
    assert input_ids.tolist() == [[1, 2, 3], [0, 0, 4], [0, 5, 6]]
    config = kwargs["generation_config"]
    assert config.top_k == 0 and config.top_p == 1.0 and config.do_sample and config.use_cache
    assert config.eos_token_id == [eos, eot] and config.max_new_tokens == 4
    assert lm.training, "generate must restore training mode"
    assert lm.generation_config is None, "the model's own generation config must be put back"


def test_generation_with_a_real_model_respects_the_length_limit(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig())
    out = generate(
        model,
        [tok("hello").input_ids, tok("hi").input_ids],
        GenerationConfig(max_new_tokens=6, temperature=0.0),
        [tok.eos_token_id],
        tok.pad_token_id,
    )
    assert len(out) == 2 and all(1 <= len(r) <= 6 for r in out)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama):
    from rlhf_lightning.ops import token_logprobs_from_hidden

    ids = torch.randint(4, 90, (2, 12))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = load_causal_lm(
            ModelConfig(name_or_path=tiny_llama, gradient_checkpointing=checkpointing), LoraConfig(r=4)
        )
        model.train()
        decoder, head = decoder_and_head(model)
        hidden = final_hidden_states(decoder, ids, torch.ones_like(ids))
        loss = -token_logprobs_from_hidden(hidden[:, :-1], head.weight, ids[:, 1:]).logprobs.mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n}
        results.append((loss.item(), grads))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert results[0][1] and all(g.abs().sum() > 0 for g in results[0][1].values())
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-6, rtol=1e-5)
    assert model.is_gradient_checkpointing
