"""The SFT stage through the ``rlhf-lightning fit`` CLI on a tiny random model."""

import shutil

import pytest
import torch

from rlhf_lightning.data import DataFormatError
from tests.helpers import run_cli, scalars, write_jsonl

# A task a 2-layer char model learns in a few dozen steps: answer with the prompt's letter repeated.
ROWS = [{"prompt": f"{c}?", "completion": c * 6} for c in "abcdefghijklmnop"]


def sft_args(tiny_llama, data, run_dir, max_steps, *extra):
    return [
        "fit",
        "--model=rlhf_lightning.SFTModule",
        f"--model.model.name_or_path={tiny_llama}",
        "--model.lora.r=8",
        "--model.lora.alpha=16",
        "--model.optim.lr=0.01",
        "--model.optim.warmup_steps=2",
        "--model.samples.every_n_steps=5",
        "--model.samples.max_new_tokens=8",
        "--data=rlhf_lightning.DemonstrationsDataModule",
        f"--data.train_files={data}",
        "--data.val_fraction=0.25",
        "--data.batch_size=4",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.max_steps={max_steps}",
        "--trainer.accelerator=cpu",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=3",
        "--trainer.enable_progress_bar=false",
        "--checkpoint.every_n_train_steps=4",
        "--checkpoint.save_top_k=-1",
        "--seed_everything=0",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    data = write_jsonl(root / "demos.jsonl", ROWS)
    cli = run_cli(sft_args(tiny_llama, data, root / "run", 30))
    return cli, root / "run", data


def test_training_loss_falls_and_everything_is_logged(trained):
    _, run_dir, _ = trained
    loss = scalars(run_dir, "train/loss")
    assert sorted(loss) == list(range(30))  # Lightning logs step k-1 after the k-th optimizer step
    first, last = sum(loss[s] for s in range(3)) / 3, sum(loss[s] for s in range(27, 30)) / 3
    assert last < 0.6 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    val = scalars(run_dir, "val/loss")
    assert len(val) >= 5 and list(val.values())[-1] < list(val.values())[0]
    ppl = scalars(run_dir, "val/perplexity")
    assert ppl and all(abs(ppl[s] - torch.tensor(val[s]).exp().item()) < 1e-3 * ppl[s] for s in ppl)
    for tag in ("lr", "perf/train_tokens_per_sec", "perf/peak_memory_gb"):
        assert scalars(run_dir, tag), f"{tag} was not logged"
    lr = scalars(run_dir, "lr")
    assert lr[0] < lr[2] and lr[29] < lr[2]  # warmup, then decay


def test_sample_table_is_written_to_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = trained
    acc = EventAccumulator(str(next(run_dir.glob("events.out.tfevents.*"))), size_guidance={"tensors": 0})
    acc.Reload()
    samples = acc.Tensors("samples/text_summary")
    assert len(samples) >= 6  # every 5 steps and at the end
    table = samples[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| # | prompt | response |") and "?" in table


def test_final_adapter_reloads_with_peft_and_reproduces_logits(trained, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cli, run_dir, _ = trained
    final = run_dir / "final"
    assert (final / "adapter_config.json").exists() and (final / "rlhf_lightning.json").exists()
    ids = torch.tensor([[5, 40, 41, 42, 43, 44]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, str(final)).eval()
        reloaded_logits = reloaded(input_ids=ids).logits
        trained_model = cli.model.model.eval()
        trained_logits = trained_model(input_ids=ids).logits
    torch.testing.assert_close(reloaded_logits, trained_logits, atol=1e-5, rtol=1e-5)
    assert (reloaded_logits - base_logits).abs().max() > 1e-2, "the adapter changed nothing"


def test_checkpoints_hold_only_trainable_weights(trained):
    _, run_dir, _ = trained
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert {"optimizer_states", "lr_schedulers", "loops", "rng_states"} <= set(ckpt)


def test_resume_continues_exactly_like_an_uninterrupted_run(trained, tiny_llama, tmp_path):
    _, run_dir, data = trained
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(
            sft_args(
                tiny_llama,
                data,
                crashed,
                30,
                "--trainer.callbacks+=tests.helpers.StopAfterStep",
                "--trainer.callbacks.stop_at=8",
            )
        )
    assert (crashed / "checkpoints" / "step000008.ckpt").exists()
    # 12 training rows / batch 4 = 3 batches per epoch: step 8 is in the middle of the third epoch
    run_cli(sft_args(tiny_llama, data, crashed, 30, "--ckpt_path=last"))
    expected, resumed = scalars(run_dir, "train/loss"), scalars(crashed, "train/loss")
    for step in range(8, 30):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), f"step {step} differs after resume"


def test_starting_a_fresh_run_over_an_existing_one_is_refused(trained, tiny_llama):
    _, run_dir, data = trained
    with pytest.raises(SystemExit, match="already holds a run"):
        run_cli(sft_args(tiny_llama, data, run_dir, 30))


def test_a_row_the_chat_template_refuses_stops_the_run_before_any_weight_is_loaded(tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    import rlhf_lightning.modules.base as base

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the data was checked")

    monkeypatch.setattr(base, "load_causal_lm", no_weights)
    model = tmp_path / "no-system-role"  # a Gemma-like template that refuses system messages
    shutil.copytree(tiny_llama, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    tokenizer.save_pretrained(model)
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "system", "content": "Be brief."}, *good["messages"]]}
    data = write_jsonl(tmp_path / "chat.jsonl", [good, good, bad])
    with pytest.raises(DataFormatError) as info:
        run_cli(sft_args(str(model), data, tmp_path / "run", 2))
    assert str(info.value) == (
        f"{data}, row 3, field 'messages': the model's chat template refused this conversation: "
        "System role not supported"
    )


def test_a_validation_interval_longer_than_an_epoch_validates_each_epoch(tiny_llama, tmp_path):
    # configs/sft.yaml and reward.yaml validate every 100 batches; a first dataset is often smaller than that
    data = write_jsonl(tmp_path / "demos.jsonl", ROWS[:8])  # 6 training rows: 2 batches of 4 per epoch
    run = tmp_path / "run"
    run_cli(sft_args(tiny_llama, data, run, 6, "--trainer.val_check_interval=100"))
    assert sorted(scalars(run, "val/loss")) == [1, 3, 5]  # after each of the 3 epochs (the step before)


def test_a_validation_interval_longer_than_an_epoch_trains_without_validation_data(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", ROWS[:8])  # 8 rows, no validation: 2 batches of 4 per epoch
    run = tmp_path / "run"
    run_cli(sft_args(tiny_llama, data, run, 3, "--trainer.val_check_interval=100", "--data.val_fraction=0"))
    assert sorted(scalars(run, "train/loss")) == [0, 1, 2] and not scalars(run, "val/loss")
