"""``save_strategy: no`` turns ``saves_per_epoch`` off: no checkpoint is saved, as Axolotl's docs say.

Stock Axolotl honours ``no`` only where its ratio ``1 / (saves_per_epoch * num_epochs)`` is 1 or more
(``saves_per_epoch: 1``, ``num_epochs: 1``, as ~245 of its example configs have); below 1 the ratio sets
``save_steps`` and the builder saves on ``steps`` anyway. With the fix ``no`` wins in both: Axolotl's real
``validate_config``, ``normalize_config`` and builder (no training) keep ``save_strategy: no``, set no
``save_steps`` and add no per-epoch callback.
"""

import axolotl.cli.config as cli_config
import axolotl.utils.config as utils_config
import fixture
import pytest
from axolotl.utils.dict import DictDefault
from test_apply import configured_builder, per_epoch_callbacks

import axolotl_savefix
from axolotl_savefix._infra.per_epoch import NEVER, SavesPerEpochCallback

RUNS = [(1, 1), (4, 2)]  # (saves_per_epoch, num_epochs): stock's ratio 1 (honours no) and 1/8 (ignores it)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fixture.build(tmp_path_factory.mktemp("fixture"))


def _cfg(model_dir, tmp_path, **extra):
    base = {
        "base_model": str(model_dir),
        "datasets": [{"path": "data.jsonl", "type": "completion"}],
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "sequence_len": 64,
        "output_dir": str(tmp_path),
    }
    return DictDefault({**base, **extra})


def _loaded(cfg):
    """Axolotl's load_cfg order: validate, then normalize."""
    validated = cli_config.validate_config(cfg)
    utils_config.normalize_config(validated)
    return validated


def _strategy(kwargs):
    value = kwargs["save_strategy"]
    return str(getattr(value, "value", value))


@pytest.mark.parametrize(("k", "epochs"), RUNS)
def test_save_strategy_no_wins_over_saves_per_epoch(model_dir, tmp_path, k, epochs):
    keys = {"saves_per_epoch": k, "num_epochs": epochs, "save_strategy": "no"}
    axolotl_savefix.apply()
    cfg = _loaded(_cfg(model_dir, tmp_path, **keys))  # validates: no SaveFixConfigError
    assert not cfg.get("save_steps")
    builder, kwargs = configured_builder(cfg)
    assert _strategy(kwargs) == "no" and "save_steps" not in kwargs
    assert NEVER not in kwargs.values()
    assert not [cb for cb in per_epoch_callbacks(builder) if isinstance(cb, SavesPerEpochCallback)]


def test_stock_ignores_save_strategy_no_where_its_ratio_is_below_one(model_dir, tmp_path):
    """What the fix corrects (stock, unpatched): saves_per_epoch: 4 over 2 epochs saves on steps despite no."""
    stock = _loaded(_cfg(model_dir, tmp_path, saves_per_epoch=4, num_epochs=2, save_strategy="no"))
    _, kwargs = configured_builder(stock)
    assert (_strategy(kwargs), kwargs["save_steps"]) == ("steps", 0.125)
    stock = _loaded(_cfg(model_dir, tmp_path, saves_per_epoch=1, num_epochs=1, save_strategy="no"))
    _, kwargs = configured_builder(stock)
    assert _strategy(kwargs) == "no" and "save_steps" not in kwargs  # ratio 1: stock honours no


@pytest.mark.parametrize(("k", "epochs"), RUNS)
def test_without_save_strategy_no_the_per_epoch_saves_are_unchanged(model_dir, tmp_path, k, epochs):
    axolotl_savefix.apply()
    cfg = _loaded(_cfg(model_dir, tmp_path, saves_per_epoch=k, num_epochs=epochs))
    assert not cfg.get("save_steps") and cfg.saves_per_epoch == k
    builder, kwargs = configured_builder(cfg)
    assert (_strategy(kwargs), kwargs["save_steps"]) == ("steps", NEVER)
    assert [cb.per_epoch for cb in per_epoch_callbacks(builder)] == [k]


def test_save_strategy_no_with_streamed_data_saves_nothing(model_dir, tmp_path):
    """Streamed data keeps stock's ratio for saves_per_epoch, but save_strategy: no still wins."""
    keys = {"saves_per_epoch": 1, "num_epochs": 4, "max_steps": 20, "streaming": True, "save_strategy": "no"}
    axolotl_savefix.apply()
    cfg = _loaded(_cfg(model_dir, tmp_path, **keys))
    assert not cfg.get("save_steps")
    builder, kwargs = configured_builder(cfg)
    assert _strategy(kwargs) == "no" and "save_steps" not in kwargs
    assert per_epoch_callbacks(builder) == []


def test_save_strategy_no_with_evals_per_epoch_evaluates_per_epoch_and_saves_nothing(model_dir, tmp_path):
    keys = {"saves_per_epoch": 2, "evals_per_epoch": 4, "num_epochs": 2, "save_strategy": "no"}
    keys["test_datasets"] = [{"path": "eval.jsonl", "type": "completion"}]
    axolotl_savefix.apply()
    cfg = _loaded(_cfg(model_dir, tmp_path, **keys))
    builder, kwargs = configured_builder(cfg, eval_dataset=[1])
    assert _strategy(kwargs) == "no" and "save_steps" not in kwargs
    assert (kwargs["eval_strategy"], kwargs["eval_steps"]) == ("steps", NEVER)
    assert [type(cb).__name__ for cb in per_epoch_callbacks(builder)] == ["EvalsPerEpochCallback"]


def test_one_line_says_save_strategy_no_saves_no_checkpoint(model_dir, tmp_path, monkeypatch):
    from axolotl_savefix._infra import log

    said = []
    monkeypatch.setattr(log.LOG, "log", lambda level, message: said.append(message))
    axolotl_savefix.apply()
    log.forget()
    _loaded(_cfg(model_dir, tmp_path, saves_per_epoch=0, save_strategy="no"))  # no per-epoch key: nothing said
    _loaded(_cfg(model_dir, tmp_path, saves_per_epoch=4, num_epochs=2))  # no "no": nothing said
    assert not [m for m in said if "save_strategy: no" in m]
    keys = {"saves_per_epoch": 4, "num_epochs": 2, "save_strategy": "no"}
    _loaded(_cfg(model_dir, tmp_path, **keys))
    _loaded(_cfg(model_dir, tmp_path, **keys))  # the same run's config again: said once
    lines = [m for m in said if "save_strategy: no" in m]
    assert len(lines) == 1 and "saves_per_epoch: 4" in lines[0] and "no checkpoint" in lines[0]
