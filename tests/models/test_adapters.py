"""Named adapters on one base: switching keeps what trains and what is active; a folder loads as a role
with the right adapter and head; adapters on the same base share one copy of it."""

import pytest
import torch

from rlhf_lightning.models import LoraConfig, ModelConfig, load_causal_lm
from rlhf_lightning.models.adapters import (
    Role,
    RoleLoader,
    _mergeable_layers,
    active,
    merged_adapter,
    next_token_logprobs,
    response_logprobs,
    role_scores,
    sample_from_role,
    sequence_kl,
    use_adapter,
)
from rlhf_lightning.models.generation import GenerationConfig
from tests.helpers import make_run_folder


@pytest.fixture(scope="module")
def folders(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return make_run_folder(tiny_llama, root / "sft", "sft", 1), make_run_folder(
        tiny_llama, root / "reward", "reward", 2
    )


def flags(model) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def test_switching_adapters_keeps_every_trainable_flag_and_the_active_adapter(tiny_llama, folders):
    sft, _ = folders
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(r=4))  # "default" trains
    model.load_adapter(str(sft), adapter_name="frozen", is_trainable=False)
    before = flags(model)
    assert any(".default." in n and t for n, t in before.items()) and not any(
        ".frozen." in n and t for n, t in before.items()
    )
    ids = torch.tensor([[5, 6, 7]])
    outputs = {}
    for adapter in ("frozen", None, "default"):
        with use_adapter(model, adapter):
            assert flags(model) == before  # peft's set_adapter would unfreeze "frozen" and freeze "default"
            outputs[adapter] = model(input_ids=ids).logits
        assert model.active_adapter == "default" and flags(model) == before
    assert not torch.allclose(outputs["frozen"], outputs[None])  # the adapter really was applied
    with pytest.raises(ValueError, match="no adapter named 'missing'; loaded: \\['default', 'frozen'\\]"):
        with use_adapter(model, "missing"):
            pass


def test_a_model_without_adapters_runs_only_as_the_base(tiny_llama):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), None)
    with use_adapter(model, None) as inner:
        assert inner is model
    with pytest.raises(ValueError, match="requested from a model without adapters"):
        with use_adapter(model, "default"):
            pass


def test_folders_load_as_roles_on_one_shared_base(tiny_llama, folders):
    sft, reward = folders
    loader = RoleLoader(ModelConfig(), "cpu")
    policy, scorer = loader.load(str(sft), "policy"), loader.load(str(reward), "reward")
    assert policy.model is scorer.model and set(policy.model.peft_config) == {"policy", "reward"}
    assert policy.head is None and scorer.head is not None  # a reward run's folder brings its score head
    base = loader.load(tiny_llama, "base")  # a model folder: the full model, its own copy
    assert base.adapter is None and base.model is not policy.model
    ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="needs a role with a scalar head"):
        role_scores(policy, ids, mask)
    same_head_on_the_base = Role(base.model, None, scorer.head)
    assert not torch.allclose(role_scores(scorer, ids, mask), role_scores(same_head_on_the_base, ids, mask))


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_a_merged_adapter_computes_what_the_adapter_does_and_leaves_the_base_bit_for_bit(
    tiny_llama, folders, quantization
):
    sft, _ = folders
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama, quantization=quantization), LoraConfig(r=4))
    model.load_adapter(str(sft), adapter_name="frozen", is_trainable=False)
    base = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters() if "lora_" not in n}
    before = flags(model)
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad(), use_adapter(model, "frozen"):
        expected = model(input_ids=ids, attention_mask=mask).logits
    assert (_mergeable_layers(model, "frozen") is None) == (quantization == "nf4")  # a 4-bit base is not merged
    with torch.no_grad(), merged_adapter(model, "frozen"):
        assert flags(model) == before
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert model.active_adapter == "default" and flags(model) == before
    for name, p in model.named_parameters():
        if name in base:
            assert p.data_ptr() == base[name][0] and torch.equal(p, base[name][1]), name
    with torch.no_grad(), merged_adapter(model, "frozen"):  # and again: nothing accumulated
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=1e-5)


def _perturb_trained_parts(model, seed: int = 0) -> None:
    """Give every trained part of the ``default`` adapter a visible effect: random LoRA B matrices (B = 0 at
    init) and noise on the trained module copies."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".default" not in name:
                continue
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


TRAINED_BEYOND_LINEAR_LORA = {
    "a trained lm_head copy": LoraConfig(r=4, modules_to_save=["lm_head"]),
    "a trained embed_tokens copy": LoraConfig(r=4, modules_to_save=["embed_tokens"]),
    "LoRA on the embeddings": LoraConfig(r=4, target_modules=["q_proj", "v_proj", "embed_tokens"]),
}


@pytest.mark.parametrize("kind", sorted(TRAINED_BEYOND_LINEAR_LORA))
def test_generation_with_a_merged_adapter_keeps_every_trained_part(tiny_llama, kind):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), TRAINED_BEYOND_LINEAR_LORA[kind])
    _perturb_trained_parts(model)
    ids, mask = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad(), use_adapter(model, "default"):
        trained = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), use_adapter(model, None):
        base = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(trained, base, atol=1e-3)  # the part under test changes the model
    with torch.no_grad(), merged_adapter(model, "default"):
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, trained, atol=1e-5, rtol=1e-5)


def test_sampled_first_tokens_follow_the_trained_head_and_a_base_reference_scores_with_the_base_head(
    tiny_llama, char_tokenizer
):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(r=4, modules_to_save=["lm_head"]))
    policy, reference = Role(model, "default"), Role(model, None)
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), active(policy):
        hidden = model(input_ids=prompt, output_hidden_states=True).hidden_states[-1][0, -1]
    trained_head = model.get_output_embeddings().modules_to_save["default"]
    favoured = 42
    with torch.no_grad():  # the trained copy alone puts +6 nats on one token after this prompt
        trained_head.weight[favoured] += 6.0 * hidden / hidden.pow(2).sum()
    temperature = 0.7
    with torch.no_grad(), active(policy):
        p_trained = torch.softmax(model(input_ids=prompt).logits[0, -1] / temperature, -1)[favoured].item()
    with torch.no_grad(), active(reference):
        p_base = torch.softmax(model(input_ids=prompt).logits[0, -1] / temperature, -1)[favoured].item()
    assert p_trained > 0.5 > 5 * p_base

    n = 400
    torch.manual_seed(0)
    sequences, _, _, _ = sample_from_role(
        policy, prompt.repeat(n, 1), torch.ones(n, 4, dtype=torch.long),
        GenerationConfig(max_new_tokens=1, temperature=temperature), [char_tokenizer.eos_token_id],
        char_tokenizer.pad_token_id,
    )  # fmt: skip
    share = (sequences[:, 4] == favoured).float().mean().item()
    assert abs(share - p_trained) < 4 * (p_trained * (1 - p_trained) / n) ** 0.5, (share, p_trained, p_base)

    # log-probs of the same sequences: the policy's through its trained head, the base reference's through the
    # base head, as a plain base model computes them
    seqs, attention_mask = sequences[:8], torch.ones(8, 5, dtype=torch.long)
    response_mask = torch.ones(8, 1, dtype=torch.bool)
    base_model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), None, trainable=False)
    with torch.no_grad():
        expected_base = torch.log_softmax(base_model(input_ids=seqs).logits[:, -2] / temperature, -1)
        expected_base = expected_base.gather(-1, seqs[:, -1:])
        with active(reference):
            got_base = response_logprobs(reference, seqs, attention_mask, response_mask, temperature).logprobs
        with active(policy):
            expected_policy = torch.log_softmax(model(input_ids=seqs).logits[:, -2] / temperature, -1)
            got_policy = response_logprobs(policy, seqs, attention_mask, response_mask, temperature).logprobs
        kl = sequence_kl(policy, reference, seqs, attention_mask, response_mask, temperature)
    torch.testing.assert_close(got_base, expected_base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_policy, expected_policy.gather(-1, seqs[:, -1:]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kl, (got_policy - expected_base).squeeze(-1), atol=1e-5, rtol=1e-5)
    assert kl.abs().max() > 1.0  # the KL sees the trained head (on main it compared the trained head with itself)
    judged = next_token_logprobs(reference, prompt, torch.ones(1, 4, dtype=torch.long), [favoured])
    with torch.no_grad():
        expected_judged = torch.log_softmax(base_model(input_ids=prompt).logits[:, -1], -1)[:, [favoured]]
    torch.testing.assert_close(judged, expected_judged, atol=1e-5, rtol=1e-5)
