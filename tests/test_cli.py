"""The command line a newcomer meets: every command listed, only what works offered, nulls that stay null."""

import subprocess
import sys

import pytest
import yaml

from rlhf_lightning.cli import COMMANDS, TRAINER_COMMANDS, main, nested_nulls
from tests.helpers import ROOT


def test_help_lists_every_command_on_one_line(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in [*TRAINER_COMMANDS, "check", *COMMANDS]:
        assert sum(line.startswith(f"  {name} ") for line in out.splitlines()) == 1, name
    main([])
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("command", ["test", "predict", "fitt"])
def test_commands_that_do_not_work_are_refused_with_the_list(command, capsys):
    with pytest.raises(SystemExit, match=f"unknown command '{command}'") as exit_info:
        main([command, "--config", "configs/sft_quick.yaml"])
    assert "  pipeline " in str(exit_info.value)


def test_the_installed_command_prints_the_list():
    process = subprocess.run(
        [sys.executable, "-m", "rlhf_lightning", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert process.returncode == 0 and "  evaluate " in process.stdout


def test_a_nested_null_is_rewritten_as_a_mapping_and_nothing_else_changes():
    assert nested_nulls(["--model.init_args.model.adapter=null"]) == ['--model.init_args.model={"adapter": null}']
    assert nested_nulls(["--data.a.b.c", "~"]) == ['--data.init_args.a={"b": {"c": null}}']
    kept = ["--model.init_args.reward_model=null", "--model.init_args.model.adapter=runs/x", "--trainer.a.b=null",
            "--model.model.name_or_path", "embedded", "--config", "c.yaml"]  # fmt: skip
    assert nested_nulls(kept) == kept


def test_a_nested_null_reaches_the_model_as_none(capsys):
    with pytest.raises(SystemExit):  # --print_config exits after printing
        main(["fit", "--config", str(ROOT / "configs/ppo_quick.yaml"), "--model.init_args.model.adapter=null",
              "--print_config"])  # fmt: skip
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["model"]["adapter"] is None


@pytest.mark.parametrize(
    ("config", "option", "message"),
    [
        (
            "sft_quick",
            "--model.optim.betas=[2,0.9]",
            "error: optim.betas must be two numbers in [0, 1), got [2.0, 0.9]",
        ),
        ("ppo_quick", "--model.ppo.vf_coef=0.5", "error: give ppo.value_lr_scale alone: ppo.vf_coef is its"),
        ("reward_quick", "--data.batch_size=0", "error: batch_size and val_batch_size must be >= 1, got 0 and None"),
    ],
)
def test_a_refused_option_is_one_line_naming_it(config, option, message, tmp_path):
    """A stage's constructor refuses the value; jsonargparse's wrapper (the union type, the whole namespace)
    is not what the user reads."""
    extra = ["--model.ppo.value_lr_scale=2"] if "vf_coef" in option else []
    argv = ["fit", "--config", str(ROOT / f"configs/{config}.yaml"), option, *extra,
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert str(exit_info.value).startswith(message) and "\n" not in str(exit_info.value)
    assert not (tmp_path / "checkpoints").exists()


def test_a_model_the_log_prob_path_cannot_reproduce_is_refused_in_one_line_before_weights_load(tmp_path):
    from transformers import Gemma2Config

    Gemma2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    ).save_pretrained(tmp_path / "gemma2")  # config only, no weights
    argv = ["fit", "--config", str(ROOT / "configs/sft_quick.yaml"), f"--model.model.name_or_path={tmp_path}/gemma2",
            "--data.tokenizer=embedded", f"--trainer.default_root_dir={tmp_path}/run"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"^error: gemma2 models soft-cap their logits \(final_logit_softcapping"):
        main(argv)


def test_data_that_every_row_is_dropped_from_is_one_line_before_anything_trains(tmp_path):
    argv = ["fit", "--config", str(ROOT / "configs/sft_quick.yaml"), "--data.max_length=4", "--data.overlong=drop",
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value)
    assert message.startswith("error: demonstrations: no usable rows in train_files ['builtin:demonstrations.jsonl']")
    assert "longer than max_length 4" in message and "\n" not in message
    assert not (tmp_path / "checkpoints").exists()


def test_check_reads_every_file_a_stage_names_without_training_or_writing(tmp_path, capsys):
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text('{"prompt": "Hi.", "response": "Hello."}\n{"prompt": "Hi."}\n')
    folder = tmp_path / "run"
    argv = ["check", "--config", str(ROOT / "configs/reward_quick.yaml"), f"--trainer.default_root_dir={folder}",
            "--model.init_args.model.adapter=null"]  # fmt: skip
    main(argv)
    assert "checked: ComparisonsDataModule: 534 training and 66 validation rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # the stage's own files: a calibration row without its response
        main([*argv, f"--model.init_args.calibration_files=[{calibration}]"])
    assert str(exit_info.value).startswith(f"error: {calibration}, row 2, field 'response': missing")
    with pytest.raises(SystemExit, match=r"error: .*bad\.jsonl, row 1, field 'prompt': missing"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": "Hi?"}\n')
        main(
            [
                "check",
                "--config",
                str(ROOT / "configs/ppo_quick.yaml"),
                f'--check.prompts=["{bad}"]',
                "--check.skip_folders",
            ]
        )
    assert not folder.exists()


def test_a_model_folder_that_does_not_exist_is_one_line_in_check_and_fit(tmp_path, capsys):
    missing = tmp_path / "sft" / "final"
    check = ["check", "--config", str(ROOT / "configs/ppo_quick.yaml"), f"--model.init_args.model.adapter={missing}"]
    with pytest.raises(SystemExit) as exit_info:
        main(check)
    assert str(exit_info.value).startswith(f"error: model.adapter {missing}: no such folder")
    main([*check, "--check.skip_folders"])  # the pipeline's check: earlier stages write the folders
    assert "checked: PromptsDataModule" in capsys.readouterr().out
    fit = ["fit", "--config", str(ROOT / "configs/sft_quick.yaml"), f"--model.init_args.model.adapter={missing}",
           f"--trainer.default_root_dir={tmp_path / 'run'}"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(fit)
    assert str(exit_info.value).startswith(f"error: model.adapter {missing}: no such folder")


@pytest.mark.parametrize("value", ["[people]", "[human, robot]", "[]"])
def test_label_sources_that_name_no_known_source_are_one_line(value):
    argv = ["check", "--config", str(ROOT / "configs/reward_quick.yaml"), f"--data.init_args.label_sources={value}",
            "--model.init_args.model.adapter=null"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert str(exit_info.value).startswith("error: label_sources: expected 'auto' or a list of ['human', 'judge']")
