"""The reward stage: score position, learning a preference rule, saving with its head, scoring files."""

import json
import random
import warnings
from types import SimpleNamespace

import pytest
import torch

from rlhf_lightning.data import ComparisonsDataModule, DataFormatError
from rlhf_lightning.data.degenerate import exploit_message, exploitable
from rlhf_lightning.data.formats import RowLocation, scored_sequence
from rlhf_lightning.models import LoraConfig, ModelConfig
from rlhf_lightning.models.reward import RewardModel, ScalarHead
from rlhf_lightning.modules import RewardModule
from rlhf_lightning.modules import reward as reward_module
from rlhf_lightning.ops import left_pad
from tests.helpers import run_cli, scalars, write_jsonl


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_left_and_right_padded_batches_give_the_same_scores(arch, request):
    module = RewardModule(model=ModelConfig(name_or_path=request.getfixturevalue(arch)), lora=LoraConfig(r=4))
    module.configure_model()
    sequences = [[5, 9, 13, 17, 2], [7, 2], [11, 12, 13, 2]]
    right = torch.zeros(3, 5, dtype=torch.long)
    right_mask = torch.zeros(3, 5, dtype=torch.long)
    for i, s in enumerate(sequences):
        right[i, : len(s)] = torch.tensor(s)
        right_mask[i, : len(s)] = 1
    left, left_mask = left_pad(sequences, pad_id=0)
    with torch.no_grad():
        alone = torch.cat(
            [module.scores(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in sequences]
        )
        torch.testing.assert_close(module.scores(right, right_mask), alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(module.scores(left, left_mask), alone, atol=1e-5, rtol=1e-4)
        # the score is read at the last real token: changing a padding position changes nothing,
        # changing the last real token (the EOS) does
        right[1, 3] = 42
        assert module.scores(right, right_mask)[1].item() == pytest.approx(alone[1].item(), abs=1e-5)
        right[1, 1] = 42
        assert module.scores(right, right_mask)[1].item() != pytest.approx(alone[1].item(), abs=1e-5)


def test_head_starts_small():
    head = ScalarHead(256)
    assert head.linear.bias.item() == 0.0
    assert head.linear.weight.std().item() == pytest.approx(1 / 257**0.5, rel=0.2)
    assert ScalarHead(256, init_std=0.02).linear.weight.std().item() == pytest.approx(0.02, rel=0.2)
    zero = ScalarHead(256, init_std=0.0)
    assert torch.equal(zero(torch.randn(3, 5, 256)), torch.zeros(3, 5))  # every score starts at exactly 0
    with pytest.raises(ValueError, match="init_std"):
        ScalarHead(256, init_std=-0.1)


def z_rule_rows(n: int, seed: int) -> list[dict]:
    """Preferred response: 7 random letters, one of them a 'z' at a random place; the other: 7 letters
    without 'z'. Same length, same alphabet otherwise: only reading the content separates them."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxy"

    def word(k):
        return "".join(rng.choice(letters) for _ in range(k))

    rows = []
    for _ in range(n):
        base, pos = word(6), rng.randrange(7)
        rows.append({"prompt": f"{word(3)}:", "chosen": base[:pos] + "z" + base[pos:], "rejected": word(7)})
    return rows


def reward_args(tiny_llama, train, val, run_dir, *extra):
    return [
        "fit",
        "--model=rlhf_lightning.RewardModule",
        f"--model.model.name_or_path={tiny_llama}",
        "--model.lora.r=8",
        "--model.lora.alpha=16",
        "--model.optim.lr=0.003",
        "--model.optim.warmup_steps=2",
        "--data=rlhf_lightning.ComparisonsDataModule",
        f"--data.train_files={train}",
        f"--data.val_files={val}",
        "--data.batch_size=8",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.max_steps=36",
        "--trainer.accelerator=cpu",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=12",
        "--trainer.enable_progress_bar=false",
        "--checkpoint.monitor=val/accuracy",
        "--checkpoint.mode=max",
        "--seed_everything=0",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    train = write_jsonl(root / "train.jsonl", z_rule_rows(200, seed=0))
    val = write_jsonl(root / "val.jsonl", z_rule_rows(64, seed=1))
    calibration = write_jsonl(
        root / "reference.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in z_rule_rows(16, seed=2)]
    )
    cli = run_cli(reward_args(tiny_llama, train, val, root / "run", f"--model.calibration_files=[{calibration}]"))
    return cli, root, calibration


def test_learns_a_content_rule_to_high_held_out_accuracy(trained):
    # Chance is 50%: the pairs differ only in whether a 'z' appears somewhere, at a random position, so an
    # untrained or position-reading model cannot beat a coin. Over 64 held-out pairs, P(>= 58 right | coin)
    # is below 1e-11; 0.9 is therefore far beyond luck, and the tiny model reaches it in 36 steps.
    _, root, _ = trained
    accuracy = scalars(root / "run", "val/accuracy")
    last = max(accuracy)
    assert len(accuracy) >= 2 and accuracy[last] >= 0.9, accuracy
    assert scalars(root / "run", "val/margin")[last] > 0
    for tag in ("train/loss", "train/accuracy", "train/chosen_mean", "train/rejected_std", "val/chosen_std"):
        assert scalars(root / "run", tag), tag
    assert (root / "run" / "checkpoints" / "last.ckpt").exists()


def test_saved_reward_model_reloads_with_its_head_and_calibration(trained, tiny_llama):
    cli, root, calibration = trained
    module = cli.model.eval()
    final = root / "run" / "final"
    info = json.loads((final / "rlhf_lightning.json").read_text())
    assert info["stage"] == "reward" and info["adapter"] and info["calibration_shift"] != 0.0
    assert info["chat_template"] == "auto"  # the text rows went through the tiny model's chat template
    reloaded = RewardModel.from_folder(final)
    rows = z_rule_rows(6, seed=3)
    sequences = [
        scored_sequence({"prompt": r["prompt"], "response": r[k]}, reloaded.tokenizer, RowLocation("t", 1), chat=True)
        for r in rows
        for k in ("chosen", "rejected")
    ]
    ids, mask = left_pad(sequences, reloaded.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = module.scores(ids, mask)
    torch.testing.assert_close(reloaded(ids, mask), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reloaded.head.linear.weight, module.score_head.linear.weight.cpu())
    # a freshly initialised head would give other scores: the head was really saved and loaded
    fresh = ScalarHead(reloaded.head.linear.in_features)
    assert not torch.allclose(fresh.linear.weight, reloaded.head.linear.weight)
    # calibration: the reference responses now score 0 on average
    ref = [json.loads(line) for line in open(calibration)]
    ref_seqs = [scored_sequence(r, reloaded.tokenizer, RowLocation("t", 1), chat=True) for r in ref]
    ids, mask = left_pad(ref_seqs, reloaded.tokenizer.pad_token_id)
    assert reloaded(ids, mask).mean().item() == pytest.approx(0.0, abs=1e-4)


def test_score_command_writes_scores_in_input_order(trained, tmp_path):
    from rlhf_lightning.cli import main

    _, root, _ = trained
    rows = [
        {"prompt": r["prompt"], "response": r[k], "id": i}
        for i, r in enumerate(z_rule_rows(10, 4))
        for k in ("chosen", "rejected")
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    main(["score", str(root / "run" / "final"), src, str(tmp_path / "out.jsonl"), "--batch_size=3"])
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in o.items() if k != "score"} for o in out] == rows
    chosen, rejected = [o["score"] for o in out[0::2]], [o["score"] for o in out[1::2]]
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 9  # the learned rule, on fresh rows


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ({"prompt": "b:"}, r"row 2, field 'response': missing"),
        ({"prompt": [{"role": "user", "content": "q"}], "response": "a"}, r"row 2, field 'response': prompt and"),
    ],
)
def test_score_command_reports_a_bad_row_in_one_line(trained, tmp_path, bad_row, expected):
    from rlhf_lightning.cli import main

    _, root, _ = trained
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a:", "response": "xyz"}, bad_row])
    with pytest.raises(SystemExit, match=r"^error: .*in\.jsonl, " + expected):  # the message, no traceback
        main(["score", str(root / "run" / "final"), src, str(tmp_path / "out.jsonl")])


def test_checkpoint_carries_the_head_and_adapter_for_resume(trained):
    _, root, _ = trained
    ckpt = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert {"score_head.linear.weight", "score_head.linear.bias"} <= keys
    assert all(k.startswith("score_head.") or "lora_" in k for k in keys)


def test_nf4_reward_model_trains_its_adapter_and_head_on_cpu(tiny_llama):
    import bitsandbytes as bnb

    from rlhf_lightning.ops import preference_loss

    torch.manual_seed(0)
    module = RewardModule(model=ModelConfig(name_or_path=tiny_llama, quantization="nf4"), lora=LoraConfig(r=4))
    module.configure_model()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules())
    ids, mask = left_pad([[5, 26, 9, 2], [5, 7, 2], [6, 26, 2], [6, 8, 9, 2]], pad_id=0)
    better, worse, group = torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([0, 1])
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.05)
    head_before = module.score_head.linear.weight.detach().clone()
    losses = []
    for _ in range(5):
        loss = preference_loss(module.scores(ids, mask), better, worse, group).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(head_before, module.score_head.linear.weight)


def test_a_bad_calibration_row_stops_the_run_before_any_weight_is_loaded(tiny_llama, tmp_path, monkeypatch):
    import rlhf_lightning.modules.base as base

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the calibration files were checked")

    monkeypatch.setattr(base, "load_causal_lm", no_weights)
    train = write_jsonl(tmp_path / "train.jsonl", z_rule_rows(16, seed=0))
    calibration = write_jsonl(tmp_path / "reference.jsonl", [{"prompt": "q", "completion": "fine"}, {"prompt": "q"}])
    args = reward_args(tiny_llama, train, train, tmp_path / "run", f"--model.calibration_files=[{calibration}]")
    with pytest.raises(DataFormatError, match=r"reference\.jsonl, row 2, field 'response': missing"):
        run_cli(args)


def _module_over(datamodule, base):
    """A RewardModule whose trainer holds ``datamodule`` (no weights: the tests replace its scorer)."""
    module = RewardModule(model=ModelConfig(name_or_path=base), calibration_batch_size=4)
    module._trainer = SimpleNamespace(datamodule=datamodule, global_step=0, logger=None)
    return module


def test_degenerate_check_by_hand_warns_when_empty_answers_win(tmp_path, tiny_llama, monkeypatch):
    rows = [
        {"prompt": "Basil tips?", "chosen": "Water it when the soil is dry.", "rejected": "Plants."},
        {"prompt": "Name a cat.", "responses": ["Mochi", "Grey Cloud the cat", "cat"], "ranking": [2, 1, 3]},
        {"prompt": " ", "chosen": "Yes.", "rejected": "No."},  # no prompt to answer: left out of the check
        {"chosen": "A whole text.", "rejected": "Another one."},  # implicit prompt: left out too
    ]
    dm = ComparisonsDataModule(train_files=write_jsonl(tmp_path / "c.jsonl", rows), val_fraction=0.0)
    module = _module_over(dm, tiny_llama)
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    # a reward model that likes short sequences: every empty answer beats every real one
    monkeypatch.setattr(reward_module, "score_sequences", lambda model, head, seqs, pad, bs: [-len(s) for s in seqs])
    report = module.degenerate_check()
    checked = dm.train_examples[:2]
    real = [-len(s) for e in checked for s in e.sequences]
    empty = [-len(dm.answer_sequence(e, "")) for e in checked]
    assert report["prompts"] == 2 and report["split"] == "training"
    assert report["median_real"] == float(torch.tensor(real).median())
    # the chosen answers: the pair's chosen, and the ranking's rank 1 ("Grey Cloud the cat", index 1)
    assert (
        report["chosen_mean"] == (-len(dm.train_examples[0].sequences[0]) - len(dm.train_examples[1].sequences[1])) / 2
    )
    assert report["kinds"]["empty"] == {"mean": sum(empty) / 2, "beats_chosen": 1.0, "above_median_real": 1.0}
    assert report["kinds"]["cut_mid_sentence"]["beats_chosen"] == 1.0  # shorter than the answer it cuts
    flagged = exploitable(report)  # warned about as the run's last line, and the pipeline stops before PPO
    assert flagged["empty"] == 1.0
    assert "most of the 2 training prompts it checked (empty answer 100%" in exploit_message(report, flagged, "R")
    # one that likes long sequences: empty answers never win, a phrase repeated past the answer's length does
    monkeypatch.setattr(reward_module, "score_sequences", lambda model, head, seqs, pad, bs: [len(s) for s in seqs])
    report = module.degenerate_check()
    assert report["kinds"]["empty"]["beats_chosen"] == 0.0 and report["kinds"]["empty"]["above_median_real"] == 0.0
    assert report["kinds"]["phrase_repeated"]["beats_chosen"] == 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.report_degenerate_check(report)
    messages = [str(w.message) for w in caught]
    assert not any("empty answer" in m for m in messages)
    assert any("a phrase repeated answer beats the chosen one for 100% of the training prompts" in m for m in messages)
    # training rows that carry added rejected variants are checked on their real answers only: same report
    augmented = ComparisonsDataModule(
        train_files=write_jsonl(tmp_path / "c.jsonl", rows), val_fraction=0.0, rejected_variants=["empty"]
    )
    module = _module_over(augmented, tiny_llama)
    augmented.tokenizer = module.tokenizer
    augmented.setup("fit")
    assert len(augmented.train_examples[0].sequences) == 3
    assert module.degenerate_check() == report


def test_trained_reward_model_reports_its_degenerate_check(trained):
    _, root, _ = trained
    report = json.loads((root / "run" / "final" / "degenerate_check.json").read_text())
    assert report["prompts"] == 64 and report["split"] == "held-out"
    assert set(report["kinds"]) == {"empty", "cut_mid_sentence", "prompt_repeated", "phrase_repeated"}
    assert all(0.0 <= r["beats_chosen"] <= 1.0 for r in report["kinds"].values())
    assert scalars(root / "run", "degenerate/empty_beats_chosen")


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_a_prompt_computed_once_for_its_responses_gives_each_sequences_loss_and_gradient(arch, request):
    from rlhf_lightning.data.comparisons import ComparisonExample, collate_comparisons

    module = RewardModule(model=ModelConfig(name_or_path=request.getfixturevalue(arch)), lora=LoraConfig(r=4))
    module.configure_model()
    with torch.no_grad():  # LoRA B starts at 0: give the adapter something to differentiate
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    prompt = [5, 6, 7, 8, 9]
    examples = [
        ComparisonExample([prompt + [10, 11, 2], prompt + [12, 2], prompt + [13, 14, 15, 2]], [(0, 1), (0, 2), (1, 2)]),
        ComparisonExample([[20, 21, 22, 2], [20, 23, 2]], [(1, 0)]),
    ]
    batch = collate_comparisons(examples, pad_id=0, pack=True)
    assert batch["packed_ids"].shape[1] < batch["input_ids"].shape[1] * 3  # one row per prompt, not per answer
    grads = []
    for packed in (True, False):
        module.zero_grad()
        module.packing = None if packed else False
        loss = module._step(batch if packed else {k: v for k, v in batch.items() if "packed" not in k},
                            module.train_metrics)  # fmt: skip
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
        module.train_metrics.reset()
    assert module.packing is False and grads[0].keys() == grads[1].keys() and len(grads[0]) > 4
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_packing_is_turned_off_for_an_attention_that_cannot_take_it(tiny_llama, monkeypatch):
    from rlhf_lightning.data.comparisons import ComparisonExample, collate_comparisons
    from rlhf_lightning.models.reward import packed_sequence_scores

    module = RewardModule(model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=4))
    module.configure_model()
    batch = collate_comparisons([ComparisonExample([[5, 6, 2], [5, 7, 2]], [(0, 1)])], pad_id=0, pack=True)
    keys = ("packed_ids", "packed_positions", "packed_segments", "packed_last")
    config = module.model.get_base_model().config
    monkeypatch.setattr(config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(ValueError, match="needs sdpa or eager attention, not flash_attention_2"):
        packed_sequence_scores(module.model, module.score_head, *(batch[k] for k in keys))
    monkeypatch.setattr(config, "_attn_implementation", "sdpa")

    def wrong(*args):  # a model that ignores the mask or the positions: scores off by far more than rounding
        return module.scores(batch["input_ids"], batch["attention_mask"]) + 1.0

    monkeypatch.setattr(reward_module, "packed_sequence_scores", wrong)
    with pytest.warns(UserWarning, match="shared-prompt packing is off: its scores differ .* by up to 1"):
        scores = module.batch_scores(batch)
    assert module.packing is False
    torch.testing.assert_close(scores, module.scores(batch["input_ids"], batch["attention_mask"]))


def test_a_shipped_calibration_file_with_the_users_comparisons_is_said_at_setup(tiny_llama, tmp_path):
    """A config copied from reward_quick.yaml keeps calibration_files: [builtin:demonstrations.jsonl] when only
    train_files are swapped: the score would be centred on the quickstart's answers, silently."""
    train = write_jsonl(tmp_path / "train.jsonl", z_rule_rows(16, seed=0))
    args = reward_args(
        tiny_llama, train, train, tmp_path / "run", "--model.calibration_files=[builtin:demonstrations.jsonl]"
    )
    args = [a for a in args if not a.startswith("--trainer.max_steps")] + ["--trainer.max_steps=1"]
    with pytest.warns(UserWarning, match=r"^calibration_files: builtin:demonstrations.jsonl is the quickstart's, .*"
                                         r"while train_files \[.*train\.jsonl'\] are not"):  # fmt: skip
        run_cli(args)
