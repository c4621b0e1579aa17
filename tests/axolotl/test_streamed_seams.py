"""Streamed data (``streaming`` or ``pretraining_dataset``): the per-epoch keys keep stock's ratio of ``max_steps``.

Without a dataset length Transformers counts the whole ``max_steps`` run as one epoch, so the epoch
fractions j/k would be fractions of the run: ``saves_per_epoch: 1`` with ``num_epochs: 4`` would save
once where stock saves 4 times. The seams step aside: Axolotl's real ``normalize_config`` and builder
(no training) give stock's values.
"""

import axolotl.utils.config as utils_config
import fixture
import pytest
from axolotl.utils.dict import DictDefault
from test_apply import configured_builder, per_epoch_callbacks

import axolotl_savefix
from axolotl_savefix._infra.per_epoch import NEVER

STREAMED = [{"streaming": True}, {"pretraining_dataset": [{"path": "data.jsonl"}]}]


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
        "num_epochs": 4,
        "max_steps": 20,
        "saves_per_epoch": 1,
    }
    return DictDefault({**base, **extra})


def _normalized(cfg):
    utils_config.normalize_config(cfg)
    return cfg


@pytest.mark.parametrize("streamed", STREAMED, ids=["streaming", "pretraining_dataset"])
def test_streamed_saves_per_epoch_keep_stocks_ratio(model_dir, tmp_path, streamed):
    stock = _normalized(_cfg(model_dir, tmp_path, **streamed))
    assert stock.save_steps == 0.25  # 1 / (saves_per_epoch * num_epochs): saves at 5 10 15 20
    _, stock_kwargs = configured_builder(stock)
    axolotl_savefix.apply()
    cfg = _normalized(_cfg(model_dir, tmp_path, **streamed))
    assert cfg.save_steps == 0.25 and cfg.saves_per_epoch == 1
    builder, kwargs = configured_builder(cfg)
    assert (kwargs["save_strategy"], kwargs["save_steps"]) == (stock_kwargs["save_strategy"], 0.25) == ("steps", 0.25)
    assert NEVER not in kwargs.values()
    assert per_epoch_callbacks(builder) == []


@pytest.mark.parametrize("streamed", STREAMED, ids=["streaming", "pretraining_dataset"])
def test_streamed_evals_per_epoch_keep_stocks_ratio_and_stocks_best_model_rule(model_dir, tmp_path, streamed):
    evals = {**streamed, "evals_per_epoch": 2, "test_datasets": [{"path": "eval.jsonl", "type": "completion"}]}
    stock = _normalized(_cfg(model_dir, tmp_path, **evals))
    assert (stock.save_steps, stock.eval_steps) == (0.25, 0.125)
    axolotl_savefix.apply()
    cfg = _normalized(_cfg(model_dir, tmp_path, **evals))
    assert (cfg.save_steps, cfg.eval_steps) == (0.25, 0.125)
    builder, kwargs = configured_builder(cfg, eval_dataset=[1])
    assert (kwargs["eval_strategy"], kwargs["eval_steps"]) == ("steps", 0.125)
    assert NEVER not in kwargs.values()
    assert per_epoch_callbacks(builder) == []
    kwargs["load_best_model_at_end"] = False  # stock's rule on the ratios decided it: not overridden
    assert builder.hook_pre_create_training_args(kwargs)["load_best_model_at_end"] is False


@pytest.mark.parametrize("streamed", STREAMED, ids=["streaming", "pretraining_dataset"])
def test_streamed_evals_per_epoch_alone_with_the_best_model_keeps_axolotls_epoch_saves(model_dir, tmp_path, streamed):
    cfg = {**streamed, "evals_per_epoch": 4, "load_best_model_at_end": True, "test_datasets": [{"path": "e.jsonl"}]}
    cfg = _cfg(model_dir, tmp_path, **cfg)
    del cfg["saves_per_epoch"]
    axolotl_savefix.apply()
    builder, kwargs = configured_builder(_normalized(cfg), eval_dataset=[1])
    assert kwargs["save_strategy"] == "epoch" and "save_steps" not in kwargs  # Axolotl's default, as stock
    assert per_epoch_callbacks(builder) == []


def test_without_streamed_data_the_per_epoch_seams_are_unchanged(model_dir, tmp_path):
    axolotl_savefix.apply()
    cfg = _normalized(_cfg(model_dir, tmp_path))
    assert cfg.get("save_steps") is None and cfg.saves_per_epoch == 1
    builder, kwargs = configured_builder(cfg)
    assert (kwargs["save_strategy"], kwargs["save_steps"]) == ("steps", NEVER)
    assert [cb.per_epoch for cb in per_epoch_callbacks(builder)] == [1]


@pytest.mark.parametrize("streamed", STREAMED, ids=["streaming", "pretraining_dataset"])
def test_a_streamed_config_stock_accepts_is_accepted(model_dir, tmp_path, streamed):
    """The per-epoch checks are about epoch fractions: a streamed run has none (stock's ratio applies)."""
    axolotl_savefix.apply()
    cfg = _normalized(_cfg(model_dir, tmp_path, **streamed, saves_per_epoch=2, save_strategy="epoch"))
    assert cfg.save_steps == 0.125


@pytest.mark.parametrize("streamed", STREAMED, ids=["streaming", "pretraining_dataset"])
def test_a_streamed_best_model_config_stock_validates_is_validated(model_dir, tmp_path, streamed):
    """saves_per_epoch: 3 does not divide evals_per_epoch: 4: refused per epoch, but a streamed run keeps stock's ratios."""
    import axolotl.cli.config as cli_config

    best = {**streamed, "saves_per_epoch": 3, "evals_per_epoch": 4, "load_best_model_at_end": True}
    best["test_datasets"] = [{"path": "eval.jsonl", "type": "completion"}]
    stock = utils_config.validate_config(_cfg(model_dir, tmp_path, **best))
    axolotl_savefix.apply()
    validated = cli_config.validate_config(_cfg(model_dir, tmp_path, **best))
    assert (validated.saves_per_epoch, validated.evals_per_epoch) == (stock.saves_per_epoch, stock.evals_per_epoch) == (3, 4)


def test_one_line_says_streamed_data_keeps_stocks_share_only_with_a_per_epoch_key(model_dir, tmp_path, monkeypatch):
    from axolotl_savefix._infra import log

    said = []
    monkeypatch.setattr(log.LOG, "log", lambda level, message: said.append(message))
    axolotl_savefix.apply()
    log.forget()
    _normalized(_cfg(model_dir, tmp_path, streaming=True, saves_per_epoch=0))  # no per-epoch key: nothing said
    assert not [m for m in said if "streamed data" in m]
    both = {"streaming": True, "evals_per_epoch": 2, "test_datasets": [{"path": "eval.jsonl", "type": "completion"}]}
    _normalized(_cfg(model_dir, tmp_path, **both))
    _normalized(_cfg(model_dir, tmp_path, **both))  # the same run's config again: said once
    lines = [m for m in said if "streamed data" in m]
    assert len(lines) == 1 and "keep Axolotl's share of max_steps" in lines[0]
    assert "saves_per_epoch" in lines[0] and "evals_per_epoch" in lines[0]
    # save_strategy: no turns saves_per_epoch off: its own line says so, the streamed line names the evals only
    log.forget()
    said.clear()
    _normalized(_cfg(model_dir, tmp_path, **both, save_strategy="no"))
    lines = [m for m in said if "streamed data" in m]
    assert len(lines) == 1 and "evals_per_epoch keeps Axolotl's share of max_steps" in lines[0]
    assert "saves_per_epoch" not in lines[0]
    assert len([m for m in said if "save_strategy: no with saves_per_epoch" in m]) == 1
