"""Streamed data (``streaming`` / ``pretraining_dataset``): no epoch fractions, stock's ratio of ``max_steps``.

Transformers counts a run without a dataset length as one epoch of ``max_steps`` steps, so the per-epoch
rules step aside there: the checks refuse nothing stock accepts, the best model is stock's rule, and the
plan's patched schedule is stock's (``saves_per_epoch: 1``, ``num_epochs: 4``, ``max_steps: 20``: 5 10 15 20).
"""

import pytest

from axolotl_savefix.rules import schedule
from axolotl_savefix.rules.checks import (
    check_best_model_alignment,
    check_eval_config,
    check_save_config,
    loads_best_model,
    per_epoch_saves_and_evals,
    per_epoch_value,
    saves_each_epoch_for_best_model,
    streamed_data,
    streamed_keys,
    streamed_line,
)
from axolotl_savefix.rules.plan import Settings, log_lines, make_plan, render

STREAMED = [{"streaming": True}, {"pretraining_dataset": [{"path": "data.jsonl"}]}, {"pretraining_dataset": "org/corpus"}]


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({}, False),
        ({"streaming": False}, False),
        ({"streaming": None, "pretraining_dataset": None}, False),
        ({"pretraining_dataset": []}, False),  # Axolotl's condition is truthiness: an empty list streams nothing
        *((cfg, True) for cfg in STREAMED),
        ({"streaming": True, "pretraining_dataset": "org/corpus"}, True),
    ],
)
def test_streamed_data_is_axolotls_condition(cfg, expected):
    assert streamed_data(cfg) is expected


@pytest.mark.parametrize("streamed", STREAMED)
def test_streamed_per_epoch_keys_are_left_to_stock(streamed):
    cfg = {**streamed, "saves_per_epoch": 1, "evals_per_epoch": 4, "test_datasets": [{"path": "e"}]}
    assert per_epoch_value(cfg, "saves_per_epoch") is None and per_epoch_value(cfg, "evals_per_epoch") is None
    assert per_epoch_saves_and_evals(cfg) == (None, None)
    assert per_epoch_value({"saves_per_epoch": 1}, "saves_per_epoch") == 1  # not streamed: unchanged


@pytest.mark.parametrize("streamed", STREAMED)
@pytest.mark.parametrize(
    "cfg",
    [
        {"saves_per_epoch": 2, "save_strategy": "epoch"},
        {"saves_per_epoch": 4, "save_strategy": "no"},
        {"saves_per_epoch": 4, "save_steps": 10},
        {"evals_per_epoch": 4, "eval_strategy": "epoch"},
    ],
)
def test_streamed_configs_are_not_refused_per_epoch(streamed, cfg):
    """Refused without streaming (the strategies never act at epoch fractions); streamed, stock decides."""
    check_save_config({**streamed, **cfg})
    check_eval_config({**streamed, **cfg})


@pytest.mark.parametrize("streamed", STREAMED)
@pytest.mark.parametrize(
    "keys",
    [
        {"saves_per_epoch": 3, "evals_per_epoch": 4},  # misaligned per epoch
        {"saves_per_epoch": 2},  # no evals_per_epoch
        {"evals_per_epoch": 4, "save_steps": 10},  # saves_per_epoch wanted
    ],
)
def test_streamed_best_model_is_stocks_rule(streamed, keys):
    cfg = {**streamed, **keys, "load_best_model_at_end": True, "test_datasets": [{"path": "e"}]}
    check_best_model_alignment(cfg)  # no refusal
    assert loads_best_model(cfg) is False  # stock's rule on its ratios decides, not the per-epoch one
    assert saves_each_epoch_for_best_model({**streamed, "evals_per_epoch": 4, "load_best_model_at_end": True,
                                            "test_datasets": [{"path": "e"}]}) is False  # fmt: skip


def test_not_streamed_best_model_rules_unchanged():
    cfg = {"saves_per_epoch": 3, "evals_per_epoch": 4, "load_best_model_at_end": True, "val_set_size": 0.1}
    with pytest.raises(ValueError, match="does not divide"):
        check_best_model_alignment(cfg)
    assert saves_each_epoch_for_best_model({"evals_per_epoch": 4, "load_best_model_at_end": True, "val_set_size": 0.1})


@pytest.mark.parametrize("streamed", STREAMED)
@pytest.mark.parametrize(
    ("k", "epochs", "max_steps", "grad_accum"), [(1, 4, 20, 1), (1, 4, 200, 1), (3, 2, 50, 4), (2, 1, 9, 1), (1, 1, 10, 2)]
)
def test_streamed_plan_is_stocks_ratio_of_max_steps(streamed, k, epochs, max_steps, grad_accum):
    """Patched saves and evals equal stock's: the ratio 1/(k*num_epochs) of max_steps, whatever steps per epoch is given."""
    raw = {
        **streamed,
        **{"saves_per_epoch": k, "evals_per_epoch": k, "num_epochs": epochs, "max_steps": max_steps},
        **{"gradient_accumulation_steps": grad_accum, "test_datasets": [{"path": "e"}]},
        "plugins": ["axolotl_savefix.SaveFixPlugin"],
    }
    ratio = 1 / (k * epochs)
    expected = schedule.interval_steps(max_steps, ratio) if ratio < 1 else [max_steps]  # ratio >= 1: Axolotl's epoch saves
    for batches in (7 * grad_accum, max_steps * grad_accum, 1):  # any shape a caller measured: streamed ignores it
        plan = make_plan(Settings.from_config(raw), batches, max_steps)
        assert plan.patched.saved == plan.stock.saved == expected
        assert plan.patched.evals == plan.stock.evals
        assert plan.lost == []
        assert any("streamed data" in note for note in plan.notes)
        assert "streamed data" in render(plan)


def test_streamed_tiny_llama_pretrain_example():
    """Axolotl's examples/archived/tiny-llama/pretrain.yml: num_epochs 4, saves_per_epoch 1, max_steps 200."""
    raw = {"pretraining_dataset": [{"path": "c4"}], "num_epochs": 4, "saves_per_epoch": 1, "max_steps": 200}
    plan = make_plan(Settings.from_config(raw), 200, 200)
    assert plan.stock.saved == plan.patched.saved == [50, 100, 150, 200]


def test_not_streamed_plan_unchanged():
    raw = {"num_epochs": 4, "saves_per_epoch": 1, "max_steps": 20}
    plan = make_plan(Settings.from_config(raw), 5, 20)
    assert plan.patched.saved == [5, 10, 15, 20]
    plan = make_plan(Settings.from_config(raw), 20, 20)  # one 20-step epoch: the end only
    assert plan.patched.saved == [20]
    assert not any("streamed" in note for note in plan.notes)


def test_a_streamed_runs_plan_lines_leave_the_streamed_line_to_the_config_time_one():
    raw = {"streaming": True, "num_epochs": 4, "saves_per_epoch": 2, "max_steps": 20}
    lines = log_lines(make_plan(Settings.from_config(raw), 40, 20))
    assert lines[0].startswith("plan: ") and "3 6 9 12 15 18 20" in lines[0]
    assert not [line for line in lines if "streamed data" in line]


@pytest.mark.parametrize("streamed", STREAMED)
@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"saves_per_epoch": 2, "evals_per_epoch": 4, "test_datasets": [{"path": "e"}]}, ["saves_per_epoch", "evals_per_epoch"]),
        ({"saves_per_epoch": 2, "evals_per_epoch": 4}, ["saves_per_epoch"]),  # no eval split: stock sets no eval ratio
        ({"saves_per_epoch": 2, "evals_per_epoch": 4, "val_set_size": 0.1, "save_strategy": "no"}, ["evals_per_epoch"]),
        ({"saves_per_epoch": 2, "save_strategy": "no"}, []),
        ({"saves_per_epoch": 0, "evals_per_epoch": 4, "val_set_size": 0.1}, ["evals_per_epoch"]),
    ],
)
def test_the_streamed_line_and_note_name_only_the_keys_left_on_stocks_share(streamed, keys, named):
    """save_strategy: no turns saves_per_epoch off: the streamed line does not name it (the no line does)."""
    cfg = {**streamed, **keys, "num_epochs": 2, "max_steps": 20}
    assert streamed_keys(cfg) == named
    assert streamed_keys({k: v for k, v in cfg.items() if k not in streamed}) == []  # not streamed: none
    notes = [n for n in make_plan(Settings.from_config(cfg), 10, 20).notes if n.startswith("streamed data")]
    if not named:
        assert notes == []
        return
    line = streamed_line(named)
    assert len(notes) == 1
    for text in (line, notes[0]):
        assert f" {' / '.join(named)} {'keeps' if len(named) == 1 else 'keep'} Axolotl's share of max_steps" in text
        assert ("saves_per_epoch" in text) == ("saves_per_epoch" in named)
