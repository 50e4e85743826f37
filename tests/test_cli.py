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
    for name in [*TRAINER_COMMANDS, *COMMANDS]:
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
