"""Exported folders compute what the project computed, with plain transformers, on a GPT-2 style model whose
tokenizer pads with its EOS (the case where transformers' sequence classifier reads the wrong token)."""

import json

import pytest
import torch

from rlhf_lightning.commands.export import SCORE_BIAS_KEY, export_model
from rlhf_lightning.commands.score import score_file
from rlhf_lightning.models import ModelConfig, load_causal_lm, load_tokenizer
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
