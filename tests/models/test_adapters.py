"""Named adapters on one base: switching keeps what trains and what is active; a folder loads as a role
with the right adapter and head; adapters on the same base share one copy of it."""

import pytest
import torch

from rlhf_lightning.models import LoraConfig, ModelConfig, load_causal_lm
from rlhf_lightning.models.adapters import Role, RoleLoader, _mergeable_layers, merged_adapter, role_scores, use_adapter
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
