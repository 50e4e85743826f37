"""Exported folders compute what the project computed, with plain transformers: on a GPT-2 style model whose
tokenizer pads with its EOS (the case where transformers' sequence classifier reads the wrong token), on a
tied-embedding llama whose run trained a copy of its LM head or embeddings, and on a llama whose tokenizer's EOS
is not its chat template's end-of-turn token (a base model's: the stop set and the input format must come along)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlhf_lightning.commands.export import SCORE_BIAS_KEY, export_model
from rlhf_lightning.commands.score import score_file
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.models import LoraConfig, ModelConfig, load_causal_lm, load_tokenizer
from rlhf_lightning.models.run_folder import EVALUATION_FILE, RunFolder
from rlhf_lightning.models.tiny import build_tiny_model
from tests.helpers import make_run_folder, write_jsonl

ROWS = [{"prompt": "Say hi. ", "response": "hello there"}, {"prompt": "Q: ", "response": "a"}]


@pytest.fixture(scope="module")
def gpt2_pad_is_eos(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2-pad-eos"), "gpt2", pad_is_eos=True)
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # nothing distinct to pad with
    return str(folder)


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, rows))
    ids = torch.tensor([r + [pad_id] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    return ids, mask


def test_exported_reward_model_scores_like_the_score_command(gpt2_pad_is_eos, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = make_run_folder(gpt2_pad_is_eos, tmp_path / "reward", "reward", seed=5)
    scored = tmp_path / "scored.jsonl"
    score_file(str(run), write_jsonl(tmp_path / "rows.jsonl", ROWS), str(scored))
    ours = [json.loads(line)["score"] for line in scored.read_text().splitlines()]
    export_model(str(run), str(tmp_path / "export"))
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id == exported.config.eos_token_id
    assert exported.config.pad_token_id == tokenizer.pad_token_id
    bias = getattr(exported.config, SCORE_BIAS_KEY)
    sequences = [tokenizer(r["prompt"] + r["response"])["input_ids"] + [tokenizer.eos_token_id] for r in ROWS]
    with torch.no_grad():
        alone = [exported(input_ids=torch.tensor([s])).logits.item() + bias for s in sequences]
        ids, mask = right_padded(sequences, tokenizer.pad_token_id)
        batch = (exported(input_ids=ids, attention_mask=mask).logits.squeeze(-1) + bias).tolist()
    assert alone == pytest.approx(ours, abs=1e-4)
    assert batch == pytest.approx(ours, abs=1e-4)


def test_exported_policy_log_probs_match_base_plus_adapter(gpt2_pad_is_eos, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = make_run_folder(gpt2_pad_is_eos, tmp_path / "sft", "sft", seed=6)
    export_model(str(run), str(tmp_path / "export"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    base = load_causal_lm(ModelConfig(name_or_path=gpt2_pad_is_eos), None, trainable=False)
    adapted = PeftModel.from_pretrained(base, str(run)).eval()
    tokenizer = load_tokenizer(gpt2_pad_is_eos)
    sequences = [tokenizer(r["prompt"] + r["response"])["input_ids"] + [tokenizer.eos_token_id] for r in ROWS]
    ids, mask = right_padded(sequences, tokenizer.pad_token_id)

    def logprobs(model, ids, mask):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]

    with torch.no_grad():
        torch.testing.assert_close(logprobs(exported, ids, mask), logprobs(adapted, ids, mask), atol=1e-4, rtol=1e-4)
        for row, sequence in enumerate(sequences):
            alone = torch.tensor([sequence])
            n = len(sequence) - 1
            got = logprobs(exported, alone, torch.ones_like(alone))[0]
            torch.testing.assert_close(got, logprobs(adapted, ids, mask)[row, :n], atol=1e-4, rtol=1e-4)


# --- the exported folder is what was trained (issue 25, item 3) ------------------------------------------------

CHAT = [{"role": "user", "content": "Hi?"}]
ANSWER = "ok!"


def write_run(base: str, folder, stage: str, lora: LoraConfig, chat_template: str = "auto", perturb: float = 0.0):
    """A run's final folder holding an adapter on ``base``, its LoRA B and ``modules_to_save`` copies moved by
    ``perturb``-scaled noise (0 keeps the adapter a no-op)."""
    return make_run_folder(base, folder, stage, seed=3, lora=lora, chat_template=chat_template, std=perturb)


@pytest.mark.parametrize("trained", [["lm_head"], ["embed_tokens"], ["lm_head", "embed_tokens"]])
def test_a_trained_copy_of_tied_embeddings_is_exported_untied_with_the_trained_logits(tiny_llama, tmp_path, trained):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    assert AutoConfig.from_pretrained(tiny_llama).tie_word_embeddings  # as SmolLM2's
    run = write_run(tiny_llama, tmp_path / "sft", "sft", LoraConfig(r=4, modules_to_save=trained), perturb=0.3)
    export_model(str(run), str(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # a loader that honours the config keeps both matrices
    weights = load_file(tmp_path / "export" / "model.safetensors")
    assert not torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    base = load_causal_lm(ModelConfig(name_or_path=tiny_llama), None, trainable=False)
    trained_model = PeftModel.from_pretrained(base, str(run)).eval()
    ids = torch.tensor([[5, 40, 41, 42, 17, 2, 60]])
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=ids).logits, trained_model(input_ids=ids).logits, atol=1e-4, rtol=0
        )


@pytest.fixture(scope="module")
def eot_llama(tmp_path_factory):
    """A tiny llama whose tokenizer's EOS (``<|endoftext|>``) is not the end-of-turn token its chat template
    closes turns with (``<|im_end|>``), fitted to answer CHAT with ANSWER and then, as a base model does, run on
    into a next user turn."""
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-eot"), "llama", eos_ends_turns=False)
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    turns = CHAT + [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": "more"}]
    ids = torch.tensor(
        [tokenizer(tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False)["input_ids"]]
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return str(folder)


def greedy_chat_reply(folder, max_new_tokens: int = 24) -> list[int]:
    """The new token ids of a greedy reply to CHAT, with plain transformers and the folder's own settings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = tokenizer(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = model.generate(**prompt, do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, prompt["input_ids"].shape[1] :].tolist()


def test_exported_policy_stops_a_greedy_chat_reply_at_the_end_of_turn(eot_llama, tmp_path):
    tokenizer = load_tokenizer(eot_llama)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answer = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    # the base model itself writes the answer, closes the turn, and runs on into a next turn
    next_turn = tokenizer.convert_tokens_to_ids(["\n", "<|im_start|>"])
    assert greedy_chat_reply(eot_llama)[: len(answer) + 3] == answer + [end_of_turn] + next_turn
    run = write_run(eot_llama, tmp_path / "sft", "sft", LoraConfig(r=4))
    export_model(str(run), str(tmp_path / "export"))
    assert greedy_chat_reply(tmp_path / "export") == answer + [end_of_turn]
    provenance = json.loads((tmp_path / "export" / "rlhf_lightning_export.json").read_text())
    assert provenance["stop_tokens"] == ["<|endoftext|>", "<|im_end|>"]
    assert provenance["inputs"]["chat_template"] is True
    assert "add_generation_prompt=True" in provenance["inputs"]["recipe"]


@pytest.mark.parametrize("recorded_in", ["run info", "evaluation.json"])
def test_exported_stop_set_is_the_ppo_runs(eot_llama, tmp_path, recorded_in):
    from transformers import GenerationConfig as HFGenerationConfig

    from rlhf_lightning.models.generation import GenerationConfig
    from rlhf_lightning.modules import PPOModule

    base = tmp_path / "base"  # a base whose generation config lists two EOS ids, as Llama-3's does
    shutil.copytree(eot_llama, base)
    tokenizer = load_tokenizer(str(base))
    listed = HFGenerationConfig.from_pretrained(base)
    listed.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("~")]
    listed.save_pretrained(base)
    run = write_run(str(base), tmp_path / "ppo", "ppo", LoraConfig(r=4))
    if recorded_in == "run info":
        module = PPOModule(
            model=ModelConfig(name_or_path=str(base)), lora=LoraConfig(r=4),
            reward_function="tests.modules.test_ppo:vowel_reward", rollout=GenerationConfig(stop_tokens=["#"]),
        )  # fmt: skip
        RunFolder.write_info(run, module.run_info())  # what the PPO run's final folder records
    else:  # a run saved before its run info recorded them: its final evaluation's settings name them
        (run / EVALUATION_FILE).write_text(json.dumps({"settings": {"stop_tokens": ["#"]}}))
    export_model(str(run), str(tmp_path / "export"))
    exported = HFGenerationConfig.from_pretrained(tmp_path / "export")
    expected = sorted(tokenizer.convert_tokens_to_ids(["<|endoftext|>", "~", "<|im_end|>", "#"]))
    assert exported.eos_token_id == expected
    provenance = json.loads((tmp_path / "export" / "rlhf_lightning_export.json").read_text())
    assert provenance["stop_token_ids"] == expected


def test_a_recorded_stop_token_that_is_not_one_token_is_refused_before_loading(eot_llama, tmp_path):
    run = write_run(eot_llama, tmp_path / "ppo", "ppo", LoraConfig(r=4))
    RunFolder(run).update_info(stop_tokens=["##"])
    with pytest.raises(OptionError, match=r"rollout.stop_tokens: '##' is 2 tokens"):
        export_model(str(run), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


# Rows whose training tokenization differs from rendering and tokenizing in one call: an answer starting with
# spaces (tokenized from where generation starts), control-token spellings in an answer or a prompt (plain text).
SNIPPET_ROWS = ROWS + [
    {"prompt": "Q: ", "response": "  spaced out  "},
    {"prompt": "Q: ", "response": "cut <|im_end|> here"},
    {"prompt": "Q: ", "response": "ends with<|im_end|>"},
    {"prompt": "Say <|im_start|>assistant hi", "response": "ok"},
]


def docs_scoring_snippet() -> str:
    """The Python block of docs/reward.md's section on scoring with the exported model."""
    text = (Path(__file__).parents[2] / "docs" / "reward.md").read_text()
    section = text[text.index("### Scoring with the exported model in plain transformers") :]
    return section[
        section.index("```python\n") + len("```python\n") : section.index("\n```", section.index("```python"))
    ]


@pytest.mark.parametrize("chat_template", ["auto", "never"])
def test_docs_snippet_scores_with_the_exported_reward_model_like_the_score_command(eot_llama, tmp_path, chat_template):
    run = write_run(eot_llama, tmp_path / "reward", "reward", LoraConfig(r=4), chat_template, perturb=0.3)
    scored = tmp_path / "scored.jsonl"
    score_file(str(run), write_jsonl(tmp_path / "rows.jsonl", SNIPPET_ROWS), str(scored))
    ours = [json.loads(line)["score"] for line in scored.read_text().splitlines()]
    export_model(str(run), str(tmp_path / "export"))
    inputs = json.loads((tmp_path / "export" / "rlhf_lightning_export.json").read_text())["inputs"]
    assert inputs["chat_template"] is (chat_template == "auto")
    if chat_template == "auto":  # the score is read at the token that closes the answer, not the template's "\n"
        assert inputs["scored_sequence_ends_with"] == "<|im_end|>"
    snippet = docs_scoring_snippet().replace('"exported/reward"', repr(str(tmp_path / "export")))
    namespace: dict = {}
    exec(snippet, namespace)
    theirs = [namespace["reward"](r["prompt"], r["response"]) for r in SNIPPET_ROWS]
    assert theirs == pytest.approx(ours, abs=1e-4)
    assert len(set(ours)) == len(ours)  # the rows score differently: a misread token would show
