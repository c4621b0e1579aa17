"""save_on_each_node through Axolotl's real config and builder; the save seam on its real trainer; one process resumes alone."""

import axolotl.cli.config as cli_config
import axolotl.utils.config as utils_config
import axolotl.utils.train as utils_train
import pytest
from axolotl.core.builders.base import TrainerBuilderBase
from axolotl.utils.dict import DictDefault
from test_apply import _minimal_cfg

import axolotl_savefix
from axolotl_savefix import SaveFixConfigError


class Builder(TrainerBuilderBase):
    def build(self, total_num_steps):  # abstract upstream
        raise NotImplementedError


def _training_args_kwargs(cfg) -> dict:
    builder = Builder.__new__(Builder)
    builder.cfg = cfg
    builder.eval_dataset = None
    kwargs: dict = {}
    builder._configure_save_and_eval_strategy(kwargs)
    return kwargs


def test_save_on_each_node_is_kept_past_axolotls_schema_and_reaches_the_training_args(tmp_path):
    assert "save_on_each_node" not in utils_config.validate_config(_minimal_cfg(tmp_path, save_on_each_node=True))  # stock
    axolotl_savefix.apply()
    cfg = cli_config.validate_config(_minimal_cfg(tmp_path, save_on_each_node=True))
    assert cfg.save_on_each_node is True
    assert _training_args_kwargs(cfg)["save_on_each_node"] is True
    unset = cli_config.validate_config(_minimal_cfg(tmp_path))
    assert "save_on_each_node" not in _training_args_kwargs(unset)  # Transformers' default stays
    with pytest.raises(SaveFixConfigError, match="save_on_each_node: 'yes' is not true or false"):
        cli_config.validate_config(_minimal_cfg(tmp_path, save_on_each_node="yes"))


def test_the_save_seam_is_patched_with_the_builder_and_reverted():
    from axolotl.core.trainers.base import AxolotlTrainer

    original = AxolotlTrainer.__dict__["_save"]
    axolotl_savefix.apply()
    assert AxolotlTrainer.__dict__["_save"] is not original
    axolotl_savefix.revert()
    assert AxolotlTrainer.__dict__["_save"] is original


def test_one_process_takes_no_collective(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    (tmp_path / "checkpoint-8").mkdir()
    axolotl_savefix.apply()
    cfg = DictDefault(output_dir=str(tmp_path), auto_resume_from_checkpoints=True)
    assert utils_train.determine_last_checkpoint(cfg) is None  # incomplete: set aside, the run starts
    assert (tmp_path / "incomplete-checkpoint-8").is_dir()
