"""What a run folder holds, read and written in one place: old folders still load, other stages are refused
with a message that names the folder."""

import json

import pytest

from rlhf_lightning.models.run_folder import RUN_INFO_FILE, RunFolder, RunInfo


def test_a_model_folder_or_name_is_a_full_model_without_run_info(tmp_path):
    for path in (tmp_path, "embedded"):
        folder = RunFolder(path)
        assert not folder.is_run and folder.stage is None and folder.adapter is None
        assert folder.base_model == str(path) and folder.chat_template == "auto"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no {RUN_INFO_FILE}"):
        _ = RunFolder(tmp_path).info


def test_an_adapter_run_names_its_base_and_keeps_stage_fields(tmp_path):
    info = RunInfo(stage="ppo", base_model="embedded", adapter=True, chat_template="auto", extra={"kl_coef": 0.05})
    RunFolder.write_info(tmp_path, info)
    folder = RunFolder(tmp_path)
    assert folder.adapter == str(tmp_path) and folder.base_model == "embedded" and folder.stage == "ppo"
    assert folder.info == info and folder.tokenizer_source == "embedded"  # no tokenizer saved here
    folder.update_info(reference="runs/sft/final")
    assert json.loads((tmp_path / RUN_INFO_FILE).read_text())["reference"] == "runs/sft/final"
    assert folder.info.extra == {"kl_coef": 0.05, "reference": "runs/sft/final"}


def test_a_full_model_run_is_loaded_from_its_own_folder(tmp_path):
    RunFolder.write_info(tmp_path, RunInfo(stage="sft", base_model="embedded", adapter=False))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    folder = RunFolder(tmp_path)
    assert folder.adapter is None and folder.base_model == str(tmp_path) and folder.tokenizer_source == str(tmp_path)


def test_a_folder_written_by_an_earlier_version_still_loads(tmp_path):
    # before chat_template was recorded, text rows were joined raw: "never"
    (tmp_path / RUN_INFO_FILE).write_text(json.dumps({"stage": "reward", "base_model": "b", "adapter": True,
                                                       "global_step": 7, "calibration_shift": 0.25}))  # fmt: skip
    folder = RunFolder(tmp_path)
    assert folder.chat_template == "never" and folder.info.global_step == 7
    assert folder.info.extra == {"calibration_shift": 0.25}
    assert folder.info.to_dict()["calibration_shift"] == 0.25


def test_another_stages_folder_is_refused_by_name(tmp_path):
    RunFolder.write_info(tmp_path, RunInfo(stage="sft", base_model="b", adapter=True))
    with pytest.raises(ValueError, match=f"{tmp_path} holds a 'sft' model, not a reward model"):
        RunFolder(tmp_path).require_stage("reward", what="a reward model")
    with pytest.raises(ValueError, match=f"{tmp_path / 'x'} is not a reward model: it has no {RUN_INFO_FILE}"):
        RunFolder(tmp_path / "x").require_stage("reward", what="a reward model")
    assert RunFolder(tmp_path).require_stage("sft", "ppo").stage == "sft"
