"""The options every stage has: declared once in CausalLMModule, recorded with each stage's own, and never
filled in by position."""

import pytest

from rlhf_lightning.models import LoraConfig, ModelConfig
from rlhf_lightning.modules import OptimConfig, RewardModule, SFTModule


@pytest.mark.parametrize("stage", [SFTModule, RewardModule])
def test_hyperparameters_record_the_shared_and_the_stage_options(stage, tiny_llama):
    module = stage(model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=4))
    assert module.hparams["model"].name_or_path == tiny_llama and module.hparams["lora"].r == 4
    assert isinstance(module.hparams["optim"], OptimConfig)
    own = "samples" if stage is SFTModule else "center_coef"
    assert own in module.hparams


@pytest.mark.parametrize("stage", [SFTModule, RewardModule])
def test_options_are_never_taken_by_position(stage, tiny_llama):
    with pytest.raises(TypeError):
        stage(ModelConfig(name_or_path=tiny_llama))
