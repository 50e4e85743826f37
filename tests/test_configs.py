"""Every YAML under configs/ parses through the CLI, and the embedded model converts faithfully."""

from pathlib import Path

import pytest
import yaml

from tests.helpers import run_cli

ALL_CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
PIPELINES = [c for c in ALL_CONFIGS if "root_dir" in yaml.safe_load(c.read_text())]
CONFIGS = [c for c in ALL_CONFIGS if c not in PIPELINES]  # stage configs for `rlhf-lightning fit`


def test_there_are_configs():
    expected = {"sft.yaml", "sft_quick.yaml", "reward.yaml", "reward_quick.yaml", "ppo.yaml", "ppo_quick.yaml"}
    assert expected <= {c.name for c in CONFIGS}
    assert "quickstart.yaml" in {c.name for c in PIPELINES}


@pytest.mark.parametrize("config", PIPELINES, ids=lambda p: p.name)
def test_pipeline_config_and_each_stage_with_its_overrides_parse(config, capsys, tmp_path):
    """The pipeline config parses, and every stage's config parses with the overrides and wiring the
    pipeline adds, so that a misspelt override fails here rather than minutes into a run."""
    from rlhf_lightning.cli import main
    from rlhf_lightning.commands.pipeline import StageSpec, stage_arguments

    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", f"--config={config}", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    root = Path(__file__).parent.parent
    for stage in ("sft", "reward", "ppo"):
        spec = StageSpec(str(root / printed[stage]["config"]), printed[stage].get("overrides") or {})
        args = stage_arguments(stage, spec, tmp_path, printed.get("common") or {}, resume=False)
        with pytest.raises(SystemExit) as exit_info:
            run_cli([*args, "--print_config"])
        assert exit_info.value.code in (0, None), f"{stage}: {capsys.readouterr().err[-500:]}"
        resolved = yaml.safe_load(capsys.readouterr().out)
        assert resolved["trainer"]["default_root_dir"] == str(tmp_path / stage)
        for key, value in spec.overrides.items():
            node = resolved
            for part in key.split("."):
                node = node[part]
            assert node == value, key


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["model"]["class_path"] == written["model"]["class_path"]
    assert printed["data"]["class_path"] == written["data"]["class_path"]
    for key, value in written["model"]["init_args"].get("model", {}).items():
        assert printed["model"]["init_args"]["model"][key] == value


def test_an_invalid_value_is_rejected_with_the_option_named(capsys):
    config = next(c for c in CONFIGS if c.name == "sft_quick.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={config}", "--model.init_args.model.quantization=nf3", "--print_config"])
    assert exit_info.value.code != 0
    assert "quantization" in capsys.readouterr().err


def test_help_shows_each_field_documentation(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--model=rlhf_lightning.SFTModule", "--model.help=rlhf_lightning.SFTModule"])
    out = capsys.readouterr().out
    assert "--model.lora.r" in out and "Rank of each adapter" in out
    assert "--model.model.quantization" in out and "bitsandbytes" in out


def _defaults(class_path: str) -> dict:
    """``__init__`` defaults of a class named by its import path, dataclasses as dicts."""
    import dataclasses
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    defaults = {}
    for klass in cls.__mro__:  # a class passing **kwargs on takes the rest of its options from its base
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        for key, param in parameters.items():
            if param.default is inspect.Parameter.empty or key in defaults:
                continue
            value = param.default
            defaults[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            break
    return defaults


def _differences(written: dict, defaults: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in written.items():
        if key not in defaults:
            out.append(f"{prefix}{key}: not an option")
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            out += _differences(value, defaults[key], f"{prefix}{key}.")
        elif value == [] and defaults[key] is None:  # an empty list written for a None default: the same
            continue
        elif (list(value) if isinstance(value, tuple | list) else value) != (
            list(defaults[key]) if isinstance(defaults[key], tuple | list) else defaults[key]
        ):
            out.append(f"{prefix}{key}: {value!r} written, {defaults[key]!r} is the default")
    return out


# The fields the full configs set on purpose (each with a comment saying why); every other field they show
# must be the default, as their first line says, so that a changed default cannot leave them behind.
NOT_DEFAULTS = {
    "sft.yaml": {"model": {"samples.every_n_steps"}, "data": set()},
    "reward.yaml": {"model": {"model.adapter", "calibration_files"}, "data": set()},
    "ppo.yaml": {"model": {"model.adapter", "reward_model"}, "data": set()},
}


@pytest.mark.parametrize("name", sorted(NOT_DEFAULTS))
def test_full_configs_show_the_defaults(name):
    written = yaml.safe_load((Path(__file__).parent.parent / "configs" / name).read_text())
    for part in ("model", "data"):
        found = _differences(written[part]["init_args"], _defaults(written[part]["class_path"]))
        unexpected = [d for d in found if d.partition(":")[0] not in NOT_DEFAULTS[name][part]]
        assert not unexpected, f"configs/{name} {part}: {unexpected}"
        stale = NOT_DEFAULTS[name][part] - {d.partition(":")[0] for d in found}  # now the default: fix the comment
        assert not stale, f"configs/{name} {part}: {stale} listed as not the default, but they are"
