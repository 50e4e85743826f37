"""Every option of the SFT, reward and PPO stages changes what it says it changes.

:data:`EFFECTS` maps each option (a field of a config group, or a stage module's own argument) to the test that
shows its documented effect: changing the option changes the behaviour it documents, not merely that it can be
set. :data:`UNTESTABLE_HERE` names the few that cannot be shown without a model hub, and why. The first tests
enumerate every option and fail on one that has neither, so a new option cannot arrive without a behaviour test;
the tests after them are those options' own, each on the smallest unit the option feeds, with the tiny models.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from rlhf_lightning.callbacks import GenerationSamples, SampleConfig
from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig, load_causal_lm, load_tokenizer
from rlhf_lightning.models.generation import sample_responses, seeded
from rlhf_lightning.modules import PPOModule, RewardModule, SFTModule
from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.optim import OptimConfig, build_optimizer, build_scheduler
from rlhf_lightning.modules.ppo import PPOConfig, PPOEvalConfig, RewardShaping
from rlhf_lightning.modules.ppo.roles import ADAPTERS
from rlhf_lightning.modules.ppo.rollout import FrozenPasses, Rollout, build_experience
from rlhf_lightning.modules.ppo.update import gradient_groups, ppo_update
from rlhf_lightning.ops import left_pad
from tests.helpers import make_run_folder, write_jsonl

GROUPS = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "optim": OptimConfig,
    "samples": SampleConfig,
    "rollout": GenerationConfig,
    "ppo": PPOConfig,
    "rewards": RewardShaping,
    "evaluation": PPOEvalConfig,
}
"""The option groups of the stages, by the name they have on the command line (``--model.init_args.<name>.*``)."""
STAGES = (SFTModule, RewardModule, PPOModule)

# the test files EFFECTS names, as node-id prefixes
HERE = "tests/test_option_effects.py::"
LOADING = "tests/models/test_loading.py::"
ADAPTER_TESTS = "tests/models/test_adapters.py::"
GENERATION = "tests/models/test_generation.py::"
OPTIM = "tests/modules/test_optim.py::"
GUARD = "tests/modules/test_guard.py::"
ON_POLICY = "tests/modules/test_ppo_on_policy.py::"
PPO_OPTIONS = "tests/modules/ppo/test_ppo_options.py::"
ROLLOUT = "tests/modules/ppo/test_rollout.py::"
PPO_STAGE = "tests/modules/test_ppo.py::"
REWARD_STAGE = "tests/modules/test_reward.py::"

EFFECTS: dict[str, str | tuple[str, ...]] = {
    # model (every stage)
    "model.name_or_path": f"{HERE}test_name_or_path_picks_the_model",
    "model.dtype": f"{HERE}test_dtype_sets_the_weight_dtype",
    "model.quantization": f"{LOADING}test_quantized_lora_trains_a_step_on_cpu",
    "model.double_quant": f"{HERE}test_double_quant_quantizes_the_constants_and_fp4_is_its_own_format",
    "model.gradient_checkpointing": f"{HERE}test_gradient_checkpointing_recomputes_each_layer_in_backward",
    "model.disable_dropout": (
        f"{LOADING}test_dropout_is_disabled_in_config_and_modules",
        f"{LOADING}test_an_adapter_loaded_from_a_folder_has_its_dropout_off",
        f"{ON_POLICY}test_settings_that_would_break_on_policy_sampling_are_refused_or_overridden",
    ),
    "model.adapter": f"{HERE}test_adapter_starts_from_the_folders_weights_and_lora_is_not_used",
    # lora
    "lora.enabled": f"{HERE}test_lora_enabled_false_trains_every_weight",
    "lora.r": f"{HERE}test_lora_rank_and_scale",
    "lora.alpha": f"{HERE}test_lora_rank_and_scale",
    "lora.use_rslora": f"{HERE}test_lora_rank_and_scale",
    "lora.dropout": f"{HERE}test_lora_dropout_reaches_fresh_adapters_and_ppo_says_it_ignores_it",
    "lora.target_modules": f"{HERE}test_target_modules_choose_the_adapted_layers",
    "lora.modules_to_save": f"{ADAPTER_TESTS}test_sampled_first_tokens_follow_the_trained_head"
    "_and_a_base_reference_scores_with_the_base_head",
    # optim
    "optim.optimizer": f"{OPTIM}test_bitsandbytes_optimizers_are_selectable",
    "optim.lr": f"{OPTIM}test_scheduler_drives_the_optimizer_learning_rate",
    "optim.weight_decay": f"{HERE}test_weight_decay_betas_and_eps_reach_adam",
    "optim.betas": f"{HERE}test_weight_decay_betas_and_eps_reach_adam",
    "optim.eps": f"{HERE}test_weight_decay_betas_and_eps_reach_adam",
    "optim.warmup_steps": f"{OPTIM}test_warmup_then_cosine_to_the_floor",
    "optim.warmup_ratio": f"{OPTIM}test_linear_and_constant_and_warmup_ratio",
    "optim.schedule": (
        f"{OPTIM}test_warmup_then_cosine_to_the_floor",
        f"{OPTIM}test_linear_and_constant_and_warmup_ratio",
    ),
    "optim.min_lr_ratio": f"{OPTIM}test_warmup_then_cosine_to_the_floor",
    "optim.max_nonfinite_steps": f"{GUARD}test_sft_stops_after_too_many_nan_steps_without_a_final_folder",
    # samples (SFT's sample table)
    "samples.every_n_steps": f"{HERE}test_sample_table_every_n_steps",
    "samples.num_prompts": f"{HERE}test_sample_table_prompts_length_and_temperature",
    "samples.max_new_tokens": f"{HERE}test_sample_table_prompts_length_and_temperature",
    "samples.temperature": f"{HERE}test_sample_table_prompts_length_and_temperature",
    # rollout (PPO's sampling)
    "rollout.max_new_tokens": f"{HERE}test_max_new_tokens_is_the_response_length_limit",
    "rollout.temperature": (
        f"{GENERATION}test_first_tokens_follow_softmax_of_logits_over_temperature",
        f"{HERE}test_rollout_temperature_divides_the_logits_of_every_log_prob",
    ),
    "rollout.top_k": f"{HERE}test_top_k_and_top_p_truncate_sampling_and_ppo_warns",
    "rollout.top_p": f"{HERE}test_top_k_and_top_p_truncate_sampling_and_ppo_warns",
    "rollout.stop_tokens": f"{ON_POLICY}test_responses_end_at_any_stop_token_and_scores_are_read_there",
    "rollout.cache": f"{HERE}test_static_cache_is_the_cache_generation_uses",
    # ppo
    "ppo.ppo_epochs": f"{HERE}test_ppo_epochs_and_num_minibatches_set_the_optimizer_steps",
    "ppo.num_minibatches": f"{HERE}test_ppo_epochs_and_num_minibatches_set_the_optimizer_steps",
    "ppo.micro_batch_size": f"{HERE}test_micro_batch_size_bounds_every_forward_pass",
    "ppo.clip_eps": f"{HERE}test_clip_eps_sets_where_the_policy_ratio_is_clipped",
    "ppo.value_clip": f"{HERE}test_value_clip_sets_where_the_values_are_clipped",
    "ppo.value_lr_scale": f"{PPO_OPTIONS}test_value_lr_scale_changes_the_value_step_and_nothing_else",
    "ppo.vf_coef": f"{PPO_OPTIONS}test_vf_coef_is_a_deprecated_alias_of_value_lr_scale",
    "ppo.entropy_coef": f"{HERE}test_entropy_coef_adds_the_entropy_to_the_policy_gradient_only",
    "ppo.gamma": f"{HERE}test_gamma_and_lam_discount_the_returns_and_advantages",
    "ppo.lam": f"{HERE}test_gamma_and_lam_discount_the_returns_and_advantages",
    "ppo.whiten_advantages": f"{HERE}test_whiten_advantages",
    "ppo.max_grad_norm": f"{HERE}test_max_grad_norm_clips_each_side_in_the_optimizer_hook",
    # rewards
    "rewards.kl_coef": f"{HERE}test_kl_coef_and_kl_estimator_set_the_penalty_in_the_rewards",
    "rewards.kl_estimator": (
        f"{HERE}test_kl_coef_and_kl_estimator_set_the_penalty_in_the_rewards",
        f"{PPO_OPTIONS}test_kl_penalty_loss_moves_the_penalty_from_the_rewards_to_the_policy_loss",
    ),
    "rewards.kl_penalty": f"{PPO_OPTIONS}test_kl_penalty_loss_moves_the_penalty_from_the_rewards_to_the_policy_loss",
    "rewards.adaptive_kl": f"{HERE}test_adaptive_kl_moves_beta_towards_the_target_over_the_horizon",
    "rewards.kl_target": f"{HERE}test_adaptive_kl_moves_beta_towards_the_target_over_the_horizon",
    "rewards.kl_horizon": f"{HERE}test_adaptive_kl_moves_beta_towards_the_target_over_the_horizon",
    "rewards.missing_eos_penalty": f"{ROLLOUT}test_score_shaping_penalises_unfinished_and_empty_responses",
    "rewards.missing_eos_mode": f"{ROLLOUT}test_score_shaping_penalises_unfinished_and_empty_responses",
    "rewards.penalize_empty": f"{ROLLOUT}test_score_shaping_penalises_unfinished_and_empty_responses",
    "rewards.score_clip": f"{ROLLOUT}test_score_shaping_penalises_unfinished_and_empty_responses",
    "rewards.whiten_scores": f"{HERE}test_whiten_scores_rescales_to_unit_spread_and_keeps_the_mean",
    # evaluation (PPO)
    "evaluation.temperature": f"{HERE}test_evaluation_temperature_and_seed",
    "evaluation.seed": f"{HERE}test_evaluation_temperature_and_seed",
    "evaluation.num_samples": f"{HERE}test_evaluation_num_samples_is_the_sample_tables_rows",
    "evaluation.gold_function": f"{PPO_STAGE}test_policy_reward_rises_while_kl_stays_bounded",
    "evaluation.at_end": f"{HERE}test_evaluation_at_end",
    "evaluation.samples_every_n_iterations": f"{HERE}test_samples_every_n_iterations",
    # the stages' own arguments
    "SFTModule.logprob_chunk_size": f"{HERE}test_sft_logprob_chunk_size_bounds_each_head_chunk",
    "RewardModule.optim": f"{HERE}test_reward_stage_default_optimizer_is_a_constant_3e_4",
    "RewardModule.center_coef": f"{HERE}test_center_coef_adds_the_squared_pair_sum_to_the_loss",
    "RewardModule.calibration_files": f"{REWARD_STAGE}test_saved_reward_model_reloads_with_its_head_and_calibration",
    "RewardModule.calibration_batch_size": f"{HERE}test_calibration_batch_size_is_the_sequences_per_pass",
    "RewardModule.degenerate_check_prompts": f"{HERE}test_degenerate_check_prompts_limits_or_turns_off_the_check",
    "RewardModule.head_init_std": f"{HERE}test_head_init_std_sets_the_spread_of_the_first_scores",
    "PPOModule.optim": f"{HERE}test_ppo_stage_default_optimizer_decays_linearly_from_5e_5",
    "PPOModule.reward_model": f"{PPO_STAGE}test_policy_starts_as_reference_and_value_as_reward",
    "PPOModule.reward_function": f"{HERE}test_reward_function_gives_the_scores",
    "PPOModule.reference_adapter": f"{PPO_STAGE}test_a_reference_adapter_other_than_the_start_is_the_kl_reference",
    "PPOModule.separate_reward": f"{PPO_STAGE}test_separate_reward_and_value_models_match_the_shared_adapters",
    "PPOModule.separate_value": f"{PPO_STAGE}test_separate_reward_and_value_models_match_the_shared_adapters",
    "PPOModule.logprob_chunk_size": f"{HERE}test_ppo_logprob_chunk_size_reaches_every_log_prob_pass",
}
"""Each option, and the test (or tests, together) showing that changing it changes what it documents."""

UNTESTABLE_HERE = {
    "model.revision": "selects a branch, tag or commit on the Hugging Face hub; the tests run offline on local folders",
    "model.trust_remote_code": "runs model code downloaded from the hub; the tests run offline on local folders",
}
"""Options whose effect needs what the tests cannot reach, and why."""


def all_options() -> set[str]:
    """``group.field`` for every field of every group, and ``Stage.argument`` for every argument of every stage
    that is not a group taking its group's defaults (those are the fields); a stage that gives a group other
    defaults (the reward stage's constant learning rate) must show that they reach the run."""
    options = {f"{name}.{f.name}" for name, group in GROUPS.items() for f in dataclasses.fields(group)}
    for stage in STAGES:
        for klass in stage.__mro__:  # a stage passing **kwargs on takes its other options from its base
            if "__init__" not in vars(klass):
                continue
            parameters = inspect.signature(klass.__init__).parameters
            for name, param in parameters.items():
                if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                    continue
                default = param.default
                if dataclasses.is_dataclass(default):
                    assert type(default) in GROUPS.values(), f"{stage.__name__}.{name}: a group not in GROUPS"
                    if default == type(default)():
                        continue
                options.add(f"{stage.__name__}.{name}")
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                break
    return options


def test_every_option_has_a_test_of_its_effect():
    options = all_options()
    missing = sorted(options - set(EFFECTS) - set(UNTESTABLE_HERE))
    assert not missing, f"options without a test of their documented effect (add one to EFFECTS): {missing}"
    stale = sorted((set(EFFECTS) | set(UNTESTABLE_HERE)) - options)
    assert not stale, f"entries for options that no longer exist: {stale}"
    assert not set(EFFECTS) & set(UNTESTABLE_HERE)


def test_every_registered_test_exists():
    for option, node_ids in EFFECTS.items():
        for node_id in (node_ids,) if isinstance(node_ids, str) else node_ids:
            path, _, name = node_id.partition("::")
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            test = getattr(module, name.partition("[")[0], None)
            assert callable(test) and test.__name__.startswith("test_"), f"{option}: no test {node_id}"


# --- model and lora -------------------------------------------------------------------------------------------------


def lora_layers(model) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def test_name_or_path_picks_the_model(tiny_llama, tiny_gpt2):
    assert load_causal_lm(ModelConfig(name_or_path=tiny_llama), None).config.model_type == "llama"
    assert load_causal_lm(ModelConfig(name_or_path=tiny_gpt2), None).config.model_type == "gpt2"


def test_dtype_sets_the_weight_dtype(tiny_llama):
    for dtype, expected in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = load_causal_lm(ModelConfig(name_or_path=tiny_llama, dtype=dtype), None)
        assert {p.dtype for p in model.parameters()} == {expected}


def test_double_quant_quantizes_the_constants_and_fp4_is_its_own_format(tiny_llama):
    import bitsandbytes as bnb

    def first_4bit_state(**options):
        model = load_causal_lm(ModelConfig(name_or_path=tiny_llama, **options), LoraConfig(r=4))
        return next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight.quant_state

    nested, plain = first_4bit_state(quantization="nf4"), first_4bit_state(quantization="nf4", double_quant=False)
    assert nested.nested and nested.absmax.dtype == torch.uint8  # the block scales are themselves 8-bit
    assert not plain.nested and plain.absmax.dtype == torch.float32
    assert nested.quant_type == "nf4" and first_4bit_state(quantization="fp4").quant_type == "fp4"


def test_gradient_checkpointing_recomputes_each_layer_in_backward(tiny_llama, monkeypatch):
    from rlhf_lightning.models import decoder_and_head, final_hidden_states

    def mlp_calls(checkpointing: bool) -> tuple[int, int]:
        """Calls of the decoder layers' MLP in the forward pass, and in forward and backward together."""
        model = load_causal_lm(
            ModelConfig(name_or_path=tiny_llama, gradient_checkpointing=checkpointing), LoraConfig(r=4)
        ).train()
        decoder, head = decoder_and_head(model)
        mlp_class, counted = type(decoder.layers[0].mlp), []
        forward = mlp_class.forward
        monkeypatch.setattr(mlp_class, "forward", lambda self, *a, **k: counted.append(1) or forward(self, *a, **k))
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        hidden = final_hidden_states(decoder, ids, torch.ones_like(ids))
        in_forward = len(counted)
        (hidden @ head.weight.T).logsumexp(-1).sum().backward()
        monkeypatch.undo()
        return in_forward, len(counted)

    layers = 2  # the tiny model's
    assert mlp_calls(False) == (layers, layers)
    assert mlp_calls(True) == (layers, 2 * layers)  # checkpointed: every layer runs again in backward


def test_adapter_starts_from_the_folders_weights_and_lora_is_not_used(tiny_llama, tmp_path):
    folder = make_run_folder(tiny_llama, tmp_path / "sft", "sft", 1)  # r 4, random B: it changes the outputs
    ids = torch.tensor([[5, 6, 7, 8]])
    fresh = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(r=16))
    started = load_causal_lm(ModelConfig(name_or_path=tiny_llama, adapter=str(folder)), LoraConfig(r=16))
    with torch.no_grad():
        base = fresh(input_ids=ids).logits  # a fresh adapter starts as the base model
        logits = started(input_ids=ids).logits
    assert (logits - base).abs().max() > 1e-2
    assert {m.lora_A["default"].out_features for m in lora_layers(started).values()} == {4}  # the folder's rank
    assert any(p.requires_grad for n, p in started.named_parameters() if "lora_" in n)  # trained further


def test_lora_enabled_false_trains_every_weight(tiny_llama):
    full = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(enabled=False))
    assert not lora_layers(full) and all(p.requires_grad for p in full.parameters())
    adapted = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig())
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_rank_and_scale(tiny_llama):
    def layer(**options):
        return next(iter(lora_layers(load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(**options)))
                         .values()))  # fmt: skip

    plain, rank_stabilised = layer(r=4, alpha=8.0), layer(r=4, alpha=8.0, use_rslora=True)
    assert plain.lora_A["default"].out_features == 4 and plain.lora_B["default"].in_features == 4
    assert plain.scaling["default"] == pytest.approx(8.0 / 4)
    assert rank_stabilised.scaling["default"] == pytest.approx(8.0 / math.sqrt(4))
    assert layer(r=2, alpha=3.0).scaling["default"] == pytest.approx(1.5)


def test_lora_dropout_reaches_fresh_adapters_and_ppo_says_it_ignores_it(tiny_llama):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(r=4, dropout=0.3))
    assert {m.lora_dropout["default"].p for m in lora_layers(model).values()} == {0.3}  # SFT and reward: as set
    rule = "tests.modules.test_ppo:vowel_reward"
    with pytest.warns(UserWarning, match=r"PPO turns every dropout off \(lora.dropout: 0.3 is ignored\)"):
        module = PPOModule(model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=4, dropout=0.3),
                           reward_function=rule)  # fmt: skip
    module.configure_model()
    dropouts = {m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts <= {0.0}  # no dropout layer anywhere drops anything
    assert module.model.peft_config["default"].lora_dropout == 0.0  # and the saved adapter config says so
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PPOModule(model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=4), reward_function=rule)


def test_target_modules_choose_the_adapted_layers(tiny_llama):
    some = load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert {name.rpartition(".")[2] for name in lora_layers(some)} == {"q_proj", "v_proj"}
    plain = load_causal_lm(ModelConfig(name_or_path=tiny_llama), None)
    linear = {name.rpartition(".")[2] for name, m in plain.named_modules() if isinstance(m, torch.nn.Linear)}
    adapted = {name.rpartition(".")[2] for name in lora_layers(load_causal_lm(ModelConfig(name_or_path=tiny_llama),
                                                                              LoraConfig(r=4)))}  # fmt: skip
    assert adapted == linear - {"lm_head"} and len(adapted) == 7  # q k v o, gate up down; never the LM head


# --- optim ----------------------------------------------------------------------------------------------------------


def test_weight_decay_betas_and_eps_reach_adam():
    def first_steps(grads, **options):
        p = torch.nn.Parameter(torch.ones(3))
        optimizer = build_optimizer([p], OptimConfig(lr=0.1, **options))
        for g in grads:
            p.grad = torch.full_like(p, g)
            optimizer.step()
        return p.detach() - 1.0

    # no gradient at all: AdamW moves the weights only by its decoupled decay, lr * weight_decay * w
    torch.testing.assert_close(first_steps([0.0], weight_decay=0.5), torch.full((3,), -0.05))
    assert torch.equal(first_steps([0.0]), torch.zeros(3))
    # Adam's first step is lr * g / (|g| + eps): eps of the gradient's size halves it
    torch.testing.assert_close(first_steps([1e-3], eps=1e-3), torch.full((3,), -0.05))
    torch.testing.assert_close(first_steps([1e-3]), torch.full((3,), -0.1), rtol=1e-4, atol=0)
    # the second step weighs the new gradient against the first by the betas
    default, fast = first_steps([1.0, -1.0]), first_steps([1.0, -1.0], betas=(0.0, 0.0))
    assert fast.abs().max() < 1e-6 and default.abs().min() > 0.05  # beta1 0: the second step undoes the first
    with pytest.raises(ValueError, match=r"^optim.betas must be two numbers in \[0, 1\), got \[0.9, 1.0\]$"):
        OptimConfig(betas=(0.9, 1.0))
    for option, value in (("weight_decay", -0.1), ("eps", -1.0), ("warmup_steps", -1)):
        with pytest.raises(ValueError, match=f"^optim.{option} must be >= 0"):
            OptimConfig(**{option: value})


# --- samples (SFT) --------------------------------------------------------------------------------------------------


class RecordingExperiment:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str, int]] = []

    def add_text(self, tag: str, text: str, global_step: int = 0) -> None:
        self.texts.append((tag, text, global_step))


@pytest.fixture(scope="module")
def tiny_policy(tiny_llama):
    return load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(r=4)), load_tokenizer(tiny_llama)


def sample_table_run(policy, config: SampleConfig, tmp_path):
    """A :class:`GenerationSamples` callback over a stub trainer with eight prompts, its tables recorded."""
    from lightning.pytorch.loggers import TensorBoardLogger

    model, tokenizer = policy
    logger = TensorBoardLogger(str(tmp_path))
    logger._experiment = RecordingExperiment()
    prompts = [tokenizer(f"q{i}:")["input_ids"] for i in range(8)]
    asked = []
    datamodule = SimpleNamespace(sample_prompts=lambda n: asked.append(n) or prompts[:n])
    trainer = SimpleNamespace(global_step=0, logger=logger, datamodule=datamodule)
    module = SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"))
    return GenerationSamples(config), trainer, module, logger.experiment.texts, asked


def table_rows(markdown: str) -> list[str]:
    return markdown.strip().splitlines()[2:]  # after the header and its separator


def test_sample_table_every_n_steps(tiny_policy, tmp_path, monkeypatch):
    def tables_at(every: int) -> list[int]:
        callback, trainer, module, _, _ = sample_table_run(tiny_policy, SampleConfig(every_n_steps=every), tmp_path)
        written = []
        monkeypatch.setattr(callback, "_log", lambda trainer, module: written.append(trainer.global_step))
        callback.on_train_start(trainer, module)
        for step in range(8):
            trainer.global_step = step
            callback.on_train_batch_end(trainer, module, None, None, step)
        callback.on_train_end(trainer, module)
        return written

    assert tables_at(3) == [0, 0, 3, 6, 7]  # at the start, every N steps and at the end
    assert tables_at(0) == []


def test_sample_table_prompts_length_and_temperature(tiny_policy, tmp_path, monkeypatch):
    import rlhf_lightning.callbacks.samples as samples_module

    lengths = []
    real_generate = samples_module.generate

    def recording_generate(*args, **kwargs):
        responses = real_generate(*args, **kwargs)
        lengths.extend(len(r) for r in responses)
        return responses

    monkeypatch.setattr(samples_module, "generate", recording_generate)

    def tables(config: SampleConfig, steps=(0, 5)) -> list[str]:
        callback, trainer, module, texts, asked = sample_table_run(tiny_policy, config, tmp_path)
        for step in steps:
            trainer.global_step = step
            callback._log(trainer, module)
        assert asked == [config.num_prompts] * len(steps)
        return [text for _, text, _ in texts]

    short = tables(SampleConfig(num_prompts=3, max_new_tokens=4))
    assert [len(table_rows(t)) for t in short] == [3, 3]
    assert max(lengths) == 4  # the tiny random model rarely ends a response on its own
    lengths.clear()
    long = tables(SampleConfig(num_prompts=5, max_new_tokens=9))
    assert [len(table_rows(t)) for t in long] == [5, 5] and max(lengths) == 9
    assert short[0] == short[1]  # temperature 0 is greedy: the same model writes the same table
    sampled = tables(SampleConfig(num_prompts=5, max_new_tokens=9, temperature=1.5))
    assert sampled[0] != sampled[1] and sampled[0] != long[0]  # sampled, from a generator seeded by the step


# --- rollout --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def causal_lm(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


PROMPTS = torch.tensor([[10, 11, 12]] * 8)


def test_max_new_tokens_is_the_response_length_limit(causal_lm):
    for n in (3, 7):
        out = sample_responses(causal_lm, PROMPTS, torch.ones_like(PROMPTS), GenerationConfig(n, 1.0), [], 0)
        assert out.shape == (8, n)  # no stop token: every response runs to the limit


def test_top_k_and_top_p_truncate_sampling_and_ppo_warns(causal_lm, tiny_llama):
    def draw(**options) -> torch.Tensor:
        with seeded(0, "cpu"):
            config = GenerationConfig(6, 1.0, **options)
            return sample_responses(causal_lm, PROMPTS, torch.ones_like(PROMPTS), config, [], 0)

    greedy = sample_responses(causal_lm, PROMPTS, torch.ones_like(PROMPTS), GenerationConfig(6, 0.0), [], 0)
    assert not torch.equal(draw(), greedy)  # the full distribution at temperature 1
    assert torch.equal(draw(top_k=1), greedy)  # one candidate left: the most likely token
    assert torch.equal(draw(top_p=1e-6), greedy)  # the smallest nucleus: the most likely token
    for options in ({"top_k": 5}, {"top_p": 0.9}):
        with pytest.warns(UserWarning, match="rollout top_k/top_p truncate the sampling distribution"):
            PPOModule(model=ModelConfig(name_or_path=tiny_llama), reward_function="tests.modules.test_ppo:vowel_reward",
                      rollout=GenerationConfig(**options))  # fmt: skip
    with pytest.raises(ValueError, match=r"^top_k must be >= 0"):
        GenerationConfig(top_k=-1)
    with pytest.raises(ValueError, match=r"^top_p must be in \(0, 1\]"):
        GenerationConfig(top_p=0.0)


def test_static_cache_is_the_cache_generation_uses(causal_lm):
    seen = set()
    hook = causal_lm.register_forward_pre_hook(
        lambda module, args, kwargs: seen.add(type(kwargs.get("past_key_values")).__name__), with_kwargs=True
    )
    try:
        for cache, expected in (("dynamic", "DynamicCache"), ("static", "StaticCache")):
            seen.clear()
            sample_responses(causal_lm, PROMPTS, torch.ones_like(PROMPTS), GenerationConfig(3, 0.7, cache=cache), [], 0)
            assert seen == {expected}
    finally:
        hook.remove()


# --- PPO: the module's passes and update ----------------------------------------------------------------------------

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def ppo(tiny_llama):
    """A PPO module on the tiny model with a rule as reward, its policy moved off the reference, and a rollout of
    six prompts; every test leaves its weights and options as they were."""
    torch.manual_seed(0)
    module = PPOModule(
        model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=4),
        reward_function="tests.modules.test_ppo:vowel_reward",
        rollout=GenerationConfig(max_new_tokens=8, temperature=TEMPERATURE), ppo=PPOConfig(ppo_epochs=1),
        evaluation=PPOEvalConfig(at_end=False, samples_every_n_iterations=0),
    )  # fmt: skip
    module.configure_model()
    module.groups = gradient_groups(module.named_parameters(), ADAPTERS["policy"])
    with torch.no_grad():
        for p in module.groups["policy"]:
            p.add_(0.05 * torch.randn_like(p))
    prompts = [module.tokenizer(f"q{i}:")["input_ids"] for i in range(6)]
    ids, mask = left_pad(prompts, module.tokenizer.pad_token_id)
    torch.manual_seed(1)
    module.rollout_batch = module.rollout(ids, mask, texts=[f"q{i}:" for i in range(6)])
    module.experience = module.make_experience(module.rollout_batch)[0]
    return module


def forward_rows(module):
    """A hook on the shared decoder recording the rows of every forward pass (policy, reference and value)."""
    from rlhf_lightning.models import decoder_and_head

    rows: list[int] = []
    decoder, _ = decoder_and_head(module.model)
    hook = decoder.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return rows, hook


def update(module, cfg: PPOConfig, experience=None):
    """One :func:`ppo_update` whose steps record each side's gradients and apply nothing (the weights stay)."""
    steps: list[dict[str, list[torch.Tensor]]] = []

    def step():
        grads = {}
        for side, params in module.groups.items():
            grads[side] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
            for p in params:
                p.grad = None
        steps.append(grads)
        return []

    torch.manual_seed(2)
    stats = ppo_update(experience or module.experience, module.roles["policy"], module.roles["value"], cfg,
                       TEMPERATURE, lambda loss: loss.backward(), step, module.logprob_chunk_size)  # fmt: skip
    return stats, steps


def flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def test_ppo_epochs_and_num_minibatches_set_the_optimizer_steps(ppo):
    for epochs, minibatches in ((1, 1), (2, 1), (2, 3)):
        rows, hook = forward_rows(ppo)
        try:
            _, steps = update(ppo, PPOConfig(ppo_epochs=epochs, num_minibatches=minibatches))
        finally:
            hook.remove()
        assert len(steps) == epochs * minibatches
        assert rows == [6 // minibatches] * (2 * epochs * minibatches)  # a policy and a value pass per minibatch


def test_micro_batch_size_bounds_every_forward_pass(ppo):
    for size, expected in ((None, [6, 6]), (2, [2] * 6)):
        rows, hook = forward_rows(ppo)
        try:
            _, steps = update(ppo, PPOConfig(ppo_epochs=1, micro_batch_size=size))
        finally:
            hook.remove()
        assert rows == expected and len(steps) == 1  # split passes, one optimizer step
    ppo.ppo = PPOConfig(micro_batch_size=4)
    rows, hook = forward_rows(ppo)
    try:
        ppo.make_experience(ppo.rollout_batch)  # the scoring passes: reference, value and policy
    finally:
        hook.remove()
        ppo.ppo = PPOConfig(ppo_epochs=1)
    assert rows == [4, 2] * 3


def moved_old_logprobs(experience):
    """The experience with its old log-probs moved by up to ±0.5 nats: every ratio of the update is off 1."""
    shift = 0.5 * (2 * torch.rand(experience.logprobs.shape, generator=torch.Generator().manual_seed(0)) - 1)
    return experience._replace(logprobs=experience.logprobs + shift * experience.mask)


def test_clip_eps_sets_where_the_policy_ratio_is_clipped(ppo):
    experience = moved_old_logprobs(ppo.experience)
    tight, tight_steps = update(ppo, PPOConfig(ppo_epochs=1, clip_eps=0.01), experience)
    loose, loose_steps = update(ppo, PPOConfig(ppo_epochs=1, clip_eps=10.0), experience)
    assert tight.policy_clipfrac > 0.2 and loose.policy_clipfrac == 0.0
    assert not torch.allclose(flat(tight_steps[0]["policy"]), flat(loose_steps[0]["policy"]))
    assert torch.equal(flat(tight_steps[0]["value"]), flat(loose_steps[0]["value"]))


def test_value_clip_sets_where_the_values_are_clipped(ppo):
    experience = ppo.experience._replace(values=ppo.experience.values + 1.0 * ppo.experience.mask)
    tight, tight_steps = update(ppo, PPOConfig(ppo_epochs=1, value_clip=0.01), experience)
    loose, loose_steps = update(ppo, PPOConfig(ppo_epochs=1, value_clip=100.0), experience)
    assert tight.value_clipfrac > 0.2 and loose.value_clipfrac == 0.0
    assert not torch.allclose(flat(tight_steps[0]["value"]), flat(loose_steps[0]["value"]))
    assert torch.equal(flat(tight_steps[0]["policy"]), flat(loose_steps[0]["policy"]))


def test_entropy_coef_adds_the_entropy_to_the_policy_gradient_only(ppo):
    off, off_steps = update(ppo, PPOConfig(ppo_epochs=1, entropy_coef=0.0))
    on, on_steps = update(ppo, PPOConfig(ppo_epochs=1, entropy_coef=0.5))
    assert off.entropy is None and on.entropy > 0  # 0: the entropy stays out of the update altogether
    assert (flat(on_steps[0]["policy"]) - flat(off_steps[0]["policy"])).abs().max() > 1e-4
    assert torch.equal(flat(on_steps[0]["value"]), flat(off_steps[0]["value"]))


def test_max_grad_norm_clips_each_side_in_the_optimizer_hook(ppo, monkeypatch):
    monkeypatch.setattr(ppo, "_trainer", SimpleNamespace(precision_plugin=SimpleNamespace()))
    monkeypatch.setattr(ppo, "step_is_finite", lambda optimizer: True)
    norms = {}
    for max_norm in (0.5, None):
        monkeypatch.setattr(ppo, "ppo", PPOConfig(max_grad_norm=max_norm))
        for params in ppo.groups.values():
            for p in params:
                p.grad = torch.full_like(p, 3.0 / math.sqrt(sum(q.numel() for q in params)))  # norm 3 each side
        ppo._grad_norms = []
        ppo.on_before_optimizer_step(None)
        assert {k: v.item() for k, v in ppo._grad_norms[0].items()} == pytest.approx({"policy": 3.0, "value": 3.0})
        norms[max_norm] = {side: flat([p.grad for p in ps]).norm().item() for side, ps in ppo.groups.items()}
        for params in ppo.groups.values():
            for p in params:
                p.grad = None
    assert norms[0.5] == pytest.approx({"policy": 0.5, "value": 0.5}, rel=1e-5)
    assert norms[None] == pytest.approx({"policy": 3.0, "value": 3.0}, rel=1e-5)  # null: measured, not clipped


def test_rollout_temperature_divides_the_logits_of_every_log_prob(ppo, monkeypatch):
    rollout = ppo.rollout_batch
    p = rollout.prompt_length
    for temperature in (TEMPERATURE, 1.3):
        monkeypatch.setattr(ppo, "rollout_config", GenerationConfig(max_new_tokens=8, temperature=temperature))
        experience = ppo.make_experience(rollout)[0]
        for i in range(len(rollout.sequences)):  # each row alone, without padding, through the plain forward pass
            real = rollout.attention_mask[i].bool()
            ids = rollout.sequences[i][real][None]
            start = int(real[:p].sum())
            with torch.no_grad():
                logits = ppo.model(input_ids=ids).logits[0, start - 1 : -1]
            expected = torch.log_softmax(logits / temperature, -1).gather(-1, ids[0, start:, None]).squeeze(-1)
            n = int(rollout.mask[i].sum())
            torch.testing.assert_close(experience.logprobs[i, :n], expected, atol=1e-5, rtol=1e-5)


def test_ppo_logprob_chunk_size_reaches_every_log_prob_pass(ppo, monkeypatch):
    import rlhf_lightning.ops.logprobs as logprobs_module

    real = logprobs_module._chunk_logits
    rows: list[int] = []
    monkeypatch.setattr(logprobs_module, "_chunk_logits", lambda h, *a: rows.append(h.shape[0]) or real(h, *a))
    tokens = int(ppo.rollout_batch.mask.sum())
    assert tokens > 10
    for size in (5, 1024):
        monkeypatch.setattr(ppo, "logprob_chunk_size", size)
        for run in (
            lambda: ppo.make_experience(ppo.rollout_batch),  # the policy's and the reference's scoring passes
            lambda: update(ppo, PPOConfig(ppo_epochs=1)),  # the update's pass, forward and backward
            lambda: ppo.sequence_kl(*tuple(ppo.rollout_batch)[:3], TEMPERATURE),  # evaluation's KL
        ):
            rows.clear()
            run()
            assert rows and max(rows) == min(size, tokens), size
            assert sum(rows) % tokens == 0  # every response token, in chunks of at most `size`
    with pytest.raises(ValueError, match=r"^logprob_chunk_size must be >= 1, got 0$"):
        PPOModule(model=ppo.model_config, reward_function="tests.modules.test_ppo:vowel_reward", logprob_chunk_size=0)


def test_ppo_stage_default_optimizer_decays_linearly_from_5e_5(ppo):
    assert ppo.optim_config == OptimConfig(lr=5e-5, warmup_ratio=0.0, schedule="linear")
    optimizer = ppo.make_optimizer()
    scheduler = build_scheduler(optimizer, 4, ppo.optim_config)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert seen == pytest.approx([5e-5, 3.75e-5, 2.5e-5, 1.25e-5])


def test_reward_function_gives_the_scores(ppo):
    from tests.modules.test_ppo import vowel_reward

    rollout = ppo.rollout_batch
    scores = ppo.score(rollout.sequences, rollout.attention_mask, rollout.prompt_length, rollout.prompt_texts)
    responses = [
        ppo.tokenizer.decode(row[m], skip_special_tokens=True)
        for row, m in zip(rollout.sequences[:, rollout.prompt_length :], rollout.mask)
    ]
    expected = vowel_reward(list(rollout.prompt_texts), responses)
    assert scores.tolist() == pytest.approx(expected) and len(set(expected)) > 1


# --- PPO: rewards, returns and advantages by hand -------------------------------------------------------------------


def hand_rollout():
    """Three responses of 4, 2 and 3 tokens (after a 2-token prompt), all ended, with fixed log-probs, values
    and scores: what :func:`build_experience` turns into rewards, returns and advantages."""
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    sequences = torch.tensor([[5, 6, 7, 8, 9, 2], [5, 6, 7, 2, 0, 0], [5, 6, 8, 9, 2, 0]])
    attention = torch.cat([torch.ones(3, 2, dtype=torch.long), mask.long()], 1)
    rollout = Rollout(sequences, attention, mask, torch.ones(3, dtype=torch.bool), 2)
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(3, 4, generator=generator) * mask
    ref = -torch.rand(3, 4, generator=generator) * mask
    frozen = FrozenPasses(ref, torch.rand(3, 4, generator=generator) * mask, torch.tensor([1.0, -2.0, 4.0]))
    return rollout, frozen, logprobs


def experience_of(ppo: PPOConfig, shaping: RewardShaping):
    rollout, frozen, logprobs = hand_rollout()
    beta = shaping.kl_controller().beta
    return build_experience(rollout, frozen, logprobs, torch.zeros_like(logprobs), beta, ppo, shaping)


NO_PENALTY = {"missing_eos_penalty": None}


def test_gamma_and_lam_discount_the_returns_and_advantages():
    rollout, frozen, _ = hand_rollout()
    scores, values, lengths = frozen.raw_scores, frozen.values, rollout.mask.sum(-1)
    shaping = RewardShaping(kl_coef=0.0, **NO_PENALTY)
    monte_carlo, _ = experience_of(PPOConfig(gamma=1.0, lam=1.0, whiten_advantages=False), shaping)
    torch.testing.assert_close(monte_carlo.returns[:, 0], scores)  # the score, undiscounted, from the first token
    discounted, _ = experience_of(PPOConfig(gamma=0.5, lam=1.0, whiten_advantages=False), shaping)
    torch.testing.assert_close(discounted.returns[:, 0], scores * 0.5 ** (lengths - 1).float())
    td, _ = experience_of(PPOConfig(gamma=0.5, lam=0.0, whiten_advantages=False), shaping)
    next_values = torch.nn.functional.pad(values[:, 1:], (0, 1))
    last = torch.nn.functional.one_hot(lengths - 1, 4).bool()
    expected = (last * scores[:, None] + 0.5 * next_values - values) * rollout.mask  # one-step TD errors
    torch.testing.assert_close(td.advantages, expected)


def test_whiten_advantages():
    shaping = RewardShaping(kl_coef=0.1, **NO_PENALTY)
    raw, _ = experience_of(PPOConfig(whiten_advantages=False), shaping)
    white, _ = experience_of(PPOConfig(whiten_advantages=True), shaping)
    mask = raw.mask
    assert abs(raw.advantages[mask].mean().item()) > 0.1
    assert white.advantages[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert white.advantages[mask].std().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(white.returns, raw.returns)  # the value targets are not whitened


def test_kl_coef_and_kl_estimator_set_the_penalty_in_the_rewards():
    rollout, frozen, logprobs = hand_rollout()
    log_ratio = (logprobs - frozen.ref_logprobs) * rollout.mask
    k3 = (torch.expm1(-log_ratio) + log_ratio) * rollout.mask
    ppo = PPOConfig(gamma=1.0, lam=1.0, whiten_advantages=False)
    for beta in (0.0, 0.1, 0.5):
        for estimator, kl in (("k1", log_ratio), ("k3", k3)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # k3 in the rewards warns; its effect is what is checked here
                experience, stats = experience_of(
                    ppo, RewardShaping(kl_coef=beta, kl_estimator=estimator, **NO_PENALTY)
                )
            # the return from the first token: the score less beta times the response's summed KL estimate
            torch.testing.assert_close(experience.returns[:, 0], frozen.raw_scores - beta * kl.sum(-1))
            assert stats.non_score_reward.item() == pytest.approx(-beta * kl.sum(-1).mean().item(), abs=1e-6)
            assert stats.kl_coef.item() == pytest.approx(beta)


def test_adaptive_kl_moves_beta_towards_the_target_over_the_horizon():
    fixed = RewardShaping(kl_coef=0.1).kl_controller()
    fixed.update(kl=30.0, n_steps=100)
    assert fixed.beta == 0.1  # adaptive_kl false: beta stays
    cases = [  # (kl_target, kl_horizon, measured KL): beta *= 1 + clip(KL / target - 1, ±0.2) * n / horizon
        (6.0, 1000, 6.6, 1 + 0.1 * 100 / 1000),
        (6.0, 1000, 30.0, 1 + 0.2 * 100 / 1000),
        (12.0, 1000, 6.6, 1 - 0.2 * 100 / 1000),
        (6.0, 200, 6.6, 1 + 0.1 * 100 / 200),
    ]
    for target, horizon, kl, factor in cases:
        controller = RewardShaping(kl_coef=0.1, adaptive_kl=True, kl_target=target, kl_horizon=horizon).kl_controller()
        controller.update(kl=kl, n_steps=100)
        assert controller.beta == pytest.approx(0.1 * factor), (target, horizon, kl)


def test_whiten_scores_rescales_to_unit_spread_and_keeps_the_mean():
    shaping = {"kl_coef": 0.0, **NO_PENALTY}
    ppo = PPOConfig(gamma=1.0, lam=1.0, whiten_advantages=False)
    raw_scores = hand_rollout()[1].raw_scores
    plain, _ = experience_of(ppo, RewardShaping(**shaping))
    white, _ = experience_of(ppo, RewardShaping(whiten_scores=True, **shaping))
    torch.testing.assert_close(plain.returns[:, 0], raw_scores)
    scores = white.returns[:, 0]
    assert scores.std().item() == pytest.approx(1.0, abs=1e-5) and raw_scores.std().item() > 2
    assert scores.mean().item() == pytest.approx(raw_scores.mean().item(), abs=1e-5)
    assert scores.argsort().tolist() == raw_scores.argsort().tolist()
    with pytest.raises(ValueError, match=r"^rewards.missing_eos_penalty must be >= 0 \(or null: off\), got -1.0$"):
        RewardShaping(missing_eos_penalty=-1.0)


# --- PPO: evaluation ------------------------------------------------------------------------------------------------


def prompt_batch(ppo, n: int = 4) -> dict:
    prompts = [ppo.tokenizer(f"r{i}:")["input_ids"] for i in range(n)]
    ids, mask = left_pad(prompts, ppo.tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "prompt_text": [f"r{i}:" for i in range(n)]}


def test_evaluation_temperature_and_seed(ppo, monkeypatch):
    batch = prompt_batch(ppo)

    def responses(**options) -> list[str]:
        monkeypatch.setattr(ppo, "eval_config", PPOEvalConfig(**options))
        return [record["policy"] for record in ppo.evaluate_batch(batch)]

    rollout_temperature = responses(seed=0)  # null: the rollout's 0.7
    assert responses(seed=0) == rollout_temperature  # batch 0 draws from the seed
    assert responses(seed=1) != rollout_temperature
    greedy = responses(seed=0, temperature=0.0)
    assert responses(seed=1, temperature=0.0) == greedy != rollout_temperature  # 0: greedy, whatever the seed
    assert responses(seed=0, temperature=2.0) != rollout_temperature


def test_evaluation_num_samples_is_the_sample_tables_rows(ppo, monkeypatch, tmp_path):
    from rlhf_lightning.data import PromptsDataModule

    data = PromptsDataModule(write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"s{i}:"} for i in range(6)]),
                             val_fraction=0.0)  # fmt: skip
    data.tokenizer = ppo.tokenizer
    data.setup("fit")
    experiment = RecordingExperiment()
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=0))
    trainer = SimpleNamespace(datamodule=data, logger=SimpleNamespace(experiment=experiment), fit_loop=loop)
    monkeypatch.setattr(ppo, "_trainer", trainer)
    for n in (2, 5):
        monkeypatch.setattr(ppo, "eval_config", PPOEvalConfig(num_samples=n))
        ppo.log_samples()
        tag, table, _ = experiment.texts[-1]
        assert tag == "samples" and len(table_rows(table)) == n


def test_samples_every_n_iterations(ppo, monkeypatch):
    loop = SimpleNamespace(_batches_that_stepped=0)
    monkeypatch.setattr(
        ppo, "_trainer", SimpleNamespace(is_global_zero=True, fit_loop=SimpleNamespace(epoch_loop=loop))
    )
    written = []
    monkeypatch.setattr(ppo, "log_samples", lambda: written.append(loop._batches_that_stepped))
    for every, expected in ((3, [0, 3, 6]), (1, list(range(8))), (0, [])):
        written.clear()
        monkeypatch.setattr(ppo, "eval_config", PPOEvalConfig(samples_every_n_iterations=every))
        for iteration in range(8):
            loop._batches_that_stepped = iteration
            ppo.on_train_batch_end(None, None, iteration)
        assert written == expected


def test_evaluation_at_end(ppo, monkeypatch):
    monkeypatch.setattr(CausalLMModule, "on_train_end", lambda self: None)  # no final folder to write here
    monkeypatch.setattr(ppo, "evaluate_at_end", lambda: {"summary": "evaluated"})
    for at_end, expected in ((True, {"summary": "evaluated"}), (False, None)):
        monkeypatch.setattr(ppo, "eval_config", PPOEvalConfig(at_end=at_end))
        ppo.on_train_end()
        assert ppo.final_evaluation == expected  # what final/evaluation.json is written from


# --- SFT and reward stages' own arguments ---------------------------------------------------------------------------


def test_sft_logprob_chunk_size_bounds_each_head_chunk(tiny_llama, monkeypatch):
    import rlhf_lightning.ops.logprobs as logprobs_module

    real = logprobs_module._chunk_logits
    rows: list[int] = []
    monkeypatch.setattr(logprobs_module, "_chunk_logits", lambda h, *a: rows.append(h.shape[0]) or real(h, *a))
    ids = torch.randint(4, 90, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    for size, expected in ((5, [5, 5, 5, 5, 2]), (1024, [22])):  # 2 x 11 trained positions
        module = SFTModule(model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=4), logprob_chunk_size=size)
        module.configure_model()
        rows.clear()
        logprobs, mask = module.target_logprobs(batch)
        assert rows == expected and bool(mask.all())
    with pytest.raises(ValueError, match=r"^logprob_chunk_size must be >= 1, got 0$"):
        SFTModule(model=ModelConfig(name_or_path=tiny_llama), logprob_chunk_size=0)


@pytest.fixture(scope="module")
def reward_backbone(tiny_llama):
    return load_causal_lm(ModelConfig(name_or_path=tiny_llama), LoraConfig(r=4))


def reward_module(tiny_llama, backbone, **options) -> RewardModule:
    module = RewardModule(model=ModelConfig(name_or_path=tiny_llama), **options)
    module.model = backbone
    torch.manual_seed(0)
    module.configure_heads()
    return module


def test_reward_stage_default_optimizer_is_a_constant_3e_4(tiny_llama, reward_backbone, monkeypatch):
    module = reward_module(tiny_llama, reward_backbone)
    monkeypatch.setattr(module, "_trainer", SimpleNamespace(estimated_stepping_batches=10))
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert seen == pytest.approx([3e-4] * 10)  # no warmup, no decay (the other stages' default is cosine)


def test_center_coef_adds_the_squared_pair_sum_to_the_loss(tiny_llama, reward_backbone, monkeypatch):
    from rlhf_lightning.modules.metrics import PreferenceMetrics

    scores = torch.tensor([2.0, 1.0, 0.5, -1.5])
    batch = {"better": torch.tensor([0, 2]), "worse": torch.tensor([1, 3]), "group": torch.tensor([0, 1]),
             "margin": torch.zeros(2)}  # fmt: skip
    losses = {}
    for coef in (0.0, 0.1):
        module = reward_module(tiny_llama, reward_backbone, center_coef=coef)
        monkeypatch.setattr(module, "batch_scores", lambda batch: scores)
        losses[coef] = module._step(batch, PreferenceMetrics()).item()
    # per pair c * (r_better + r_worse)^2, averaged over the two prompts
    assert losses[0.1] - losses[0.0] == pytest.approx(0.1 * ((2.0 + 1.0) ** 2 + (0.5 - 1.5) ** 2) / 2)
    with pytest.raises(ValueError, match=r"^center_coef must be >= 0 \(0: off\), got -0.1$"):
        RewardModule(model=ModelConfig(name_or_path=tiny_llama), center_coef=-0.1)


def test_calibration_batch_size_is_the_sequences_per_pass(tiny_llama, reward_backbone):
    rows, hook = forward_rows(SimpleNamespace(model=reward_backbone))
    try:
        for size, expected in ((2, [2, 2, 1]), (16, [5])):
            module = reward_module(tiny_llama, reward_backbone, calibration_batch_size=size)
            module.calibration_sequences = [[5, 6, 2], [7, 8, 9, 2], [10, 2], [11, 12, 13, 14, 2], [15, 16, 2]]
            rows.clear()
            module.reference_mean_score()
            assert rows == expected
    finally:
        hook.remove()
    for size in (0, -1):  # -1 scored nothing and calibrated by 0; 0 failed after training, in range()
        with pytest.raises(ValueError, match=rf"^calibration_batch_size must be >= 1, got {size}$"):
            RewardModule(model=ModelConfig(name_or_path=tiny_llama), calibration_batch_size=size)


def test_degenerate_check_prompts_limits_or_turns_off_the_check(tiny_llama, reward_backbone, tmp_path, monkeypatch):
    from rlhf_lightning.data import ComparisonsDataModule
    from rlhf_lightning.modules import reward as reward_stage

    rows = [{"prompt": f"Question {i}?", "chosen": f"A good answer {i}.", "rejected": "No."} for i in range(5)]
    data = ComparisonsDataModule(train_files=write_jsonl(tmp_path / "c.jsonl", rows), val_fraction=0.0)
    data.tokenizer = load_tokenizer(tiny_llama)
    data.setup("fit")
    batch_sizes = []

    def by_length(model, head, sequences, pad, batch_size):
        batch_sizes.append(batch_size)
        return [float(len(s)) for s in sequences]

    monkeypatch.setattr(reward_stage, "score_sequences", by_length)
    checked = {}
    for prompts in (2, 64, 0):
        module = reward_module(tiny_llama, reward_backbone, degenerate_check_prompts=prompts, calibration_batch_size=3)
        module._trainer = SimpleNamespace(datamodule=data, global_step=0, logger=None)
        report = module.degenerate_check()
        checked[prompts] = None if report is None else report["prompts"]
    assert checked == {2: 2, 64: 5, 0: None}  # up to that many prompts; 0: no check
    assert batch_sizes == [3, 3]  # the check scores calibration_batch_size sequences at a time


def test_head_init_std_sets_the_spread_of_the_first_scores(tiny_llama, reward_backbone):
    hidden = reward_backbone.config.hidden_size
    spread = {}
    for std in (0.0, 0.02, 0.5, None):
        head = reward_module(tiny_llama, reward_backbone, head_init_std=std).score_head
        assert head.linear.bias.item() == 0.0
        spread[std] = head.linear.weight.std().item()
    assert spread[0.0] == 0.0
    assert spread[0.02] == pytest.approx(0.02, rel=0.3) and spread[0.5] == pytest.approx(0.5, rel=0.3)
    assert spread[None] == pytest.approx(1 / math.sqrt(hidden + 1), rel=0.3)


@pytest.mark.parametrize(
    "field, value", [("every_n_steps", -1), ("num_prompts", -2), ("temperature", -0.5), ("max_new_tokens", 0)]
)
def test_a_sample_table_option_out_of_range_is_refused_by_name(field, value):
    from rlhf_lightning.callbacks import SampleConfig

    with pytest.raises(ValueError, match=f"^samples.{field} must be"):
        SampleConfig(**{field: value})
