"""``save_strategy: no`` turns ``saves_per_epoch`` off: no saves schedule of the fix's own, no refusal.

Axolotl documents ``save_strategy: no`` as the way to turn checkpoints off. Stock honours it with
``saves_per_epoch`` only where its ratio ``1 / (k * num_epochs)`` is 1 or more; with the fix (as in the
upstream series) ``no`` wins: the per-epoch rules see no ``saves_per_epoch``, the plan saves nothing.
"""

import enum

import pytest

from axolotl_savefix.rules.checks import (
    SaveFixConfigError,
    check_best_model_alignment,
    check_eval_config,
    check_save_config,
    loads_best_model,
    per_epoch_saves_and_evals,
    per_epoch_value,
    saves_each_epoch_by_default,
    saves_each_epoch_for_best_model,
)
from axolotl_savefix.rules.plan import Settings, log_lines, make_plan, render

PLUGIN = {"plugins": ["axolotl_savefix.SaveFixPlugin"]}


class SaveStrategy(enum.Enum):  # the shape of Transformers' enum, which a validated config may hold
    NO = "no"


@pytest.mark.parametrize("no", ["no", SaveStrategy.NO])
@pytest.mark.parametrize("k", [1, 4])
def test_save_strategy_no_turns_saves_per_epoch_off(no, k):
    cfg = {"saves_per_epoch": k, "save_strategy": no}
    assert per_epoch_value(cfg, "saves_per_epoch") is None
    check_save_config(cfg)  # not refused: stock honours no (ratio >= 1), and so does the upstream fix
    check_save_config({**cfg, "num_epochs": 2, "save_total_limit": 3})


def test_save_strategy_no_leaves_evals_per_epoch_alone():
    cfg = {"saves_per_epoch": 2, "evals_per_epoch": 4, "save_strategy": "no", "val_set_size": 0.1}
    assert per_epoch_value(cfg, "evals_per_epoch") == 4
    assert per_epoch_saves_and_evals(cfg) == (None, 4)


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({"saves_per_epoch": 4, "save_strategy": "best"}, ["save_strategy: 'best'"]),
        ({"saves_per_epoch": 2, "save_strategy": "epoch"}, ["save_strategy: 'epoch'"]),
        ({"saves_per_epoch": 4, "save_steps": 10}, ["save_steps: 10"]),
    ],
)
def test_the_other_refusals_stay(cfg, words):
    with pytest.raises(SaveFixConfigError) as err:
        check_save_config(cfg)
    for word in words:
        assert word in str(err.value)


def test_evals_per_epoch_with_eval_strategy_no_is_still_refused_as_stocks_validator_does():
    """Stock's check_evals: "eval_strategy must be empty or set to `steps` when used with evals_per_epoch"."""
    with pytest.raises(SaveFixConfigError, match="eval_strategy: 'no'"):
        check_eval_config({"evals_per_epoch": 4, "eval_strategy": "no"})


@pytest.mark.parametrize("saves", [{}, {"saves_per_epoch": 1}, {"saves_per_epoch": 4}])
def test_save_strategy_no_is_not_one_save_per_epoch(saves):
    cfg = {**saves, "evals_per_epoch": 4, "save_strategy": "no", "load_best_model_at_end": True, "val_set_size": 0.1}
    assert saves_each_epoch_by_default(cfg) is False
    assert saves_each_epoch_for_best_model(cfg) is False
    assert loads_best_model(cfg) is False  # no checkpoint to load the best model from
    assert per_epoch_saves_and_evals(cfg) == (None, 4)


@pytest.mark.parametrize(
    ("best", "off"),
    [
        ({"load_best_model_at_end": True}, "or set load_best_model_at_end: false."),
        ({"early_stopping_patience": 3}, "or remove early_stopping_patience."),
    ],
)
def test_the_best_model_with_save_strategy_no_is_refused_naming_both_fixes(best, off):
    """No save to load the best model from: the message names the key that turned the saves off and both ways out."""
    cfg = {"saves_per_epoch": 2, "evals_per_epoch": 4, "save_strategy": "no", **best}
    with pytest.raises(SaveFixConfigError) as err:
        check_best_model_alignment({**cfg, "val_set_size": 0.1})
    message = str(err.value)
    assert "save_strategy: 'no' turns saves_per_epoch: 2 off and saves none" in message
    assert "Remove save_strategy: 'no' to save with saves_per_epoch" in message and message.endswith(off)
    check_best_model_alignment(cfg)  # no validation set: left alone, as Axolotl does


@pytest.mark.parametrize(("k", "epochs", "stock"), [(1, 1, []), (4, 2, [3, 6, 9, 12, 15, 18, 21, 24])])
@pytest.mark.parametrize("patched", [True, False])
def test_the_plan_saves_nothing_and_says_why(k, epochs, stock, patched):
    raw = {"saves_per_epoch": k, "num_epochs": epochs, "save_strategy": "no", **(PLUGIN if patched else {})}
    plan = make_plan(Settings.from_config(raw), 12, 12 * epochs)
    assert plan.patched.saved == plan.patched.kept == []
    assert plan.stock.saved == stock  # stock: its ratio wins where it is below 1
    assert plan.requested == [] and plan.lost == []
    notes = [note for note in plan.notes if "save_strategy: 'no'" in note]
    assert len(notes) == 1 and f"saves_per_epoch: {k}" in notes[0]
    assert notes[0] in render(plan)
    assert render(plan).endswith("\n  no checkpoint is asked for: none is saved")
    assert not [line for line in log_lines(plan) if "save_strategy: 'no'" in line]  # the run says it at config time


def test_the_plan_with_streamed_data_and_save_strategy_no_saves_nothing():
    raw = {"streaming": True, "saves_per_epoch": 1, "num_epochs": 4, "max_steps": 20, "save_strategy": "no", **PLUGIN}
    plan = make_plan(Settings.from_config(raw), 20, 20)
    assert plan.patched.saved == []
    assert plan.stock.saved == [5, 10, 15, 20]
    assert not [note for note in plan.notes if "streamed data" in note]  # its saves_per_epoch is off, not stock's share


def test_the_plan_without_save_strategy_no_is_unchanged():
    plan = make_plan(Settings.from_config({"saves_per_epoch": 4, "num_epochs": 2, **PLUGIN}), 12, 24)
    assert plan.patched.saved == [3, 6, 9, 12, 15, 18, 21, 24]
    assert not [note for note in plan.notes if "save_strategy" in note]
