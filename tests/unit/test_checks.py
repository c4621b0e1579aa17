import pytest
from hypothesis import given
from hypothesis import strategies as st

from axolotl_savefix.rules.checks import (
    SaveFixConfigError,
    check_best_model_alignment,
    check_eval_config,
    check_save_config,
    loads_best_model,
    saves_each_epoch_for_best_model,
)


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({"saves_per_epoch": -2}, ["saves_per_epoch: -2", "whole number", "or to 0"]),
        ({"saves_per_epoch": 2.5}, ["saves_per_epoch: 2.5", "whole number"]),
        ({"saves_per_epoch": "4"}, ["saves_per_epoch: '4'"]),
        (
            {"saves_per_epoch": 4, "save_steps": 10},
            ["saves_per_epoch: 4", "save_steps: 10", "remove save_steps"],
        ),
        (
            {"saves_per_epoch": 4, "save_strategy": "epoch"},
            ["save_strategy: 'epoch'", "Remove save_strategy"],
        ),
        ({"saves_per_epoch": 4, "save_strategy": "best"}, ["save_strategy: 'best'"]),
        ({"saves_per_epoch": 2, "save_strategy": "epoch"}, ["save_strategy: 'epoch'"]),
        ({"save_total_limit": 2.5}, ["save_total_limit: 2.5", "0 to keep every checkpoint"]),
    ],
)
def test_bad_settings_name_key_value_and_fix(cfg, words):
    with pytest.raises(SaveFixConfigError) as err:
        check_save_config(cfg)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"saves_per_epoch": 4},
        {"saves_per_epoch": 4, "save_strategy": "steps"},
        {"save_total_limit": 0},
        {"save_total_limit": 3, "save_steps": 10},
        {"save_strategy": "epoch"},
        # stock accepts these and does the right thing with them, so we do too:
        {"saves_per_epoch": 0},  # off (`if cfg.saves_per_epoch:` upstream)
        {"saves_per_epoch": 0, "save_steps": 10},
        {"saves_per_epoch": 0, "save_strategy": "no"},
        {"saves_per_epoch": 1, "save_strategy": "no"},  # save_strategy: no wins: no checkpoint saved (stock, ratio 1)
        {"saves_per_epoch": 4, "save_strategy": "no"},  # the same (stock's ratio 1/4 would save anyway)
        {"saves_per_epoch": 1, "save_strategy": "epoch"},  # the same steps, asked for twice
        {"save_total_limit": -1},  # Transformers never rotates with a limit <= 0: keeps all
    ],
)
def test_good_settings_pass(cfg):
    check_save_config(cfg)


VAL = {"val_set_size": 0.1}


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (
            {"load_best_model_at_end": True, "saves_per_epoch": 3, "evals_per_epoch": 4},
            ["load_best_model_at_end: true", "saves_per_epoch: 3", "evals_per_epoch: 4", "3, 6, 9", "1, 2, 4"],
        ),
        (
            {"early_stopping_patience": 3, "saves_per_epoch": 4, "evals_per_epoch": 2},
            ["early_stopping_patience: 3", "saves_per_epoch: 4", "evals_per_epoch: 2", "4, 8, 12", "1, 2"],
        ),
        (
            {"load_best_model_at_end": True, "saves_per_epoch": 2, "eval_steps": 10},
            ["saves_per_epoch: 2", "evals_per_epoch", "2, 4, 6", "eval_steps: 10"],
        ),
        (
            {"load_best_model_at_end": True, "evals_per_epoch": 6, "save_steps": 7},
            ["evals_per_epoch: 6", "saves_per_epoch", "1, 2, 3, 6", "save_steps: 7"],
        ),
        # evals_per_epoch alone, but saves that are not Axolotl's default once per epoch: Transformers saves every
        # 10 steps (no eval there), never, or every 500 steps (its default interval), not at each epoch end
        (
            {"load_best_model_at_end": True, "evals_per_epoch": 2, "save_steps": 10},
            ["evals_per_epoch: 2", "divisor of 2 (1, 2)", "instead of save_steps: 10."],
        ),
        (
            {"early_stopping_patience": 3, "evals_per_epoch": 2, "save_strategy": "no"},
            ["early_stopping_patience: 3", "evals_per_epoch: 2", "instead of save_strategy: 'no'."],
        ),
        (
            {"load_best_model_at_end": True, "evals_per_epoch": 2, "save_strategy": "steps"},
            ["evals_per_epoch: 2", "instead of save_strategy: 'steps'."],
        ),
    ],
)
def test_best_model_needs_saves_that_follow_evals(cfg, words):
    with pytest.raises(SaveFixConfigError) as err:
        check_best_model_alignment({**VAL, **cfg})
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "cfg",
    [
        {**VAL, "load_best_model_at_end": True, "saves_per_epoch": 2, "evals_per_epoch": 4},
        {**VAL, "early_stopping_patience": 2, "saves_per_epoch": 3, "evals_per_epoch": 3},
        {**VAL, "load_best_model_at_end": True, "evals_per_epoch": 4, "save_strategy": "best"},
        {**VAL, "saves_per_epoch": 3, "evals_per_epoch": 4},  # no best model: any mix is fine
        {"load_best_model_at_end": True, "saves_per_epoch": 3, "evals_per_epoch": 4},  # no val set: Axolotl turns it off
        {**VAL, "load_best_model_at_end": True, "save_steps": 10, "eval_steps": 5},  # upstream's own rules apply
        {**VAL, "load_best_model_at_end": True, "save_strategy": "epoch", "eval_steps": 5},  # no per-epoch key: stock's
    ],
)
def test_aligned_or_unrelated_configs_pass(cfg):
    check_best_model_alignment(cfg)


# evals_per_epoch alone: Axolotl's default saves (save_strategy unset or epoch, no save_steps) are once per epoch, at
# each epoch end, and every epoch end is the eval target k/k: aligned for any k, as stock accepts it
EVALS_ONLY = [
    {**VAL, "load_best_model_at_end": True, "evals_per_epoch": 4},
    {**VAL, "load_best_model_at_end": True, "evals_per_epoch": 3, "save_strategy": "epoch"},
    {**VAL, "early_stopping_patience": 2, "evals_per_epoch": 1},
    {"val_set_size": 0, "test_datasets": [{"path": "t"}], "load_best_model_at_end": True, "evals_per_epoch": 5},
]


@pytest.mark.parametrize("cfg", EVALS_ONLY)
def test_evals_per_epoch_alone_is_aligned_with_axolotls_one_save_per_epoch(cfg):
    check_best_model_alignment(cfg)
    assert loads_best_model(cfg) is True
    assert saves_each_epoch_for_best_model(cfg) is True  # the seams save as saves_per_epoch: 1


@given(k_eval=st.integers(1, 10**6))
def test_evals_per_epoch_alone_is_aligned_for_every_k(k_eval):
    cfg = {**VAL, "load_best_model_at_end": True, "evals_per_epoch": k_eval}
    check_best_model_alignment(cfg)
    assert loads_best_model(cfg) is True


def test_evals_per_epoch_alone_without_the_best_model_changes_nothing():
    for cfg in (
        {**VAL, "evals_per_epoch": 4, "load_best_model_at_end": False},  # Axolotl's validated default
        {"load_best_model_at_end": True, "val_set_size": 0, "evals_per_epoch": 4},  # no validation set
        {**VAL, "load_best_model_at_end": True, "evals_per_epoch": 4, "saves_per_epoch": 2},  # the key itself
        {**VAL, "load_best_model_at_end": True, "evals_per_epoch": 4, "save_strategy": "best"},  # the metric decides
        {**VAL, "load_best_model_at_end": True, "evals_per_epoch": 0},  # evals off
    ):
        check_best_model_alignment(cfg)
        assert saves_each_epoch_for_best_model(cfg) is False, cfg


def test_saves_per_epoch_zero_is_not_unset_for_the_best_model_rule():
    """``saves_per_epoch: 0`` keeps its meaning, "no per-epoch saves": refused with evals_per_epoch, as before."""
    cfg = {**VAL, "load_best_model_at_end": True, "saves_per_epoch": 0, "evals_per_epoch": 4}
    with pytest.raises(SaveFixConfigError, match=r"with evals_per_epoch: 4, set saves_per_epoch to a divisor of 4 \(1, 2, 4\)\.$"):
        check_best_model_alignment(cfg)
    assert loads_best_model(cfg) is False
    assert saves_each_epoch_for_best_model(cfg) is False


@given(k_save=st.integers(1, 24), k_eval=st.integers(1, 24))
def test_alignment_holds_exactly_when_every_save_target_is_an_eval_target(k_save, k_eval):
    """k_save | k_eval  <=>  every j/k_save equals some i/k_eval (checked with exact fractions)."""
    from fractions import Fraction

    subset = {Fraction(j, k_save) for j in range(1, k_save + 1)} <= {Fraction(i, k_eval) for i in range(1, k_eval + 1)}
    cfg = {**VAL, "load_best_model_at_end": True, "saves_per_epoch": k_save, "evals_per_epoch": k_eval}
    if subset:
        check_best_model_alignment(cfg)
    else:
        with pytest.raises(SaveFixConfigError):
            check_best_model_alignment(cfg)


@pytest.mark.parametrize("value", [-1, 1.5, "2"])
def test_evals_per_epoch_must_be_a_whole_number(value):
    with pytest.raises(SaveFixConfigError, match=f"evals_per_epoch: {value!r}"):
        check_eval_config({"evals_per_epoch": value})


@pytest.mark.parametrize(
    "cfg", [{"evals_per_epoch": 0}, {"evals_per_epoch": 0, "eval_steps": 5}, {"evals_per_epoch": 0, "eval_strategy": "epoch"}]
)
def test_evals_per_epoch_zero_is_off_as_in_stock(cfg):
    check_eval_config({**VAL, **cfg})


def test_zero_per_epoch_counts_as_unset_for_the_best_model_rule():
    # saves_per_epoch 2, evals off: the same refusal as with evals_per_epoch unset
    with pytest.raises(SaveFixConfigError, match="set evals_per_epoch to a multiple of 2"):
        check_best_model_alignment({**VAL, "load_best_model_at_end": True, "saves_per_epoch": 2, "evals_per_epoch": 0})
    check_best_model_alignment({**VAL, "load_best_model_at_end": True, "saves_per_epoch": 0, "evals_per_epoch": 0})


def test_divisors_of_a_huge_evals_per_epoch_are_listed_at_once():
    import time

    cfg = {**VAL, "load_best_model_at_end": True, "saves_per_epoch": 7, "evals_per_epoch": 10**9}
    start = time.perf_counter()
    with pytest.raises(
        SaveFixConfigError, match=r"a divisor of 1000000000 \(1, 2, 4, 5, 8, 10, \.\.\., 250000000, 500000000, 1000000000\)"
    ):
        check_best_model_alignment(cfg)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("cfg", "loads"),
    [
        ({"load_best_model_at_end": True, "val_set_size": 0.1, "saves_per_epoch": 2, "evals_per_epoch": 4}, True),
        ({"early_stopping_patience": 3, "load_best_model_at_end": False, "val_set_size": 0.1, "saves_per_epoch": 1,
          "evals_per_epoch": 1}, True),
        ({"load_best_model_at_end": False, "val_set_size": 0.1, "saves_per_epoch": 2, "evals_per_epoch": 4}, False),
        ({"load_best_model_at_end": True, "val_set_size": 0, "saves_per_epoch": 2, "evals_per_epoch": 4}, False),
        ({"load_best_model_at_end": True, "val_set_size": 0, "test_datasets": [{"path": "t"}], "saves_per_epoch": 2,
          "evals_per_epoch": 4}, True),
        ({"load_best_model_at_end": True, "val_set_size": 0.1, "saves_per_epoch": 2}, False),
        ({"load_best_model_at_end": True, "val_set_size": 0.1, "saves_per_epoch": 3, "evals_per_epoch": 4}, False),
        # evals_per_epoch alone: Axolotl's default saves, once per epoch, divide any evals_per_epoch
        ({"load_best_model_at_end": True, "val_set_size": 0.1, "evals_per_epoch": 4}, True),
        ({"early_stopping_patience": 3, "load_best_model_at_end": False, "val_set_size": 0.1, "evals_per_epoch": 3}, True),
        ({"load_best_model_at_end": False, "val_set_size": 0.1, "evals_per_epoch": 4}, False),
        ({"load_best_model_at_end": True, "val_set_size": 0, "evals_per_epoch": 4}, False),
        ({"load_best_model_at_end": True, "val_set_size": 0.1, "evals_per_epoch": 4, "save_steps": 10}, False),
        ({"load_best_model_at_end": True, "val_set_size": 0.1, "evals_per_epoch": 4, "save_strategy": "no"}, False),
        ({"load_best_model_at_end": True, "val_set_size": 0.1, "evals_per_epoch": 4, "saves_per_epoch": 0}, False),
    ],
)  # fmt: skip
def test_the_best_model_is_loaded_by_stocks_rule_with_the_per_epoch_alignment(cfg, loads):
    """Axolotl's causal builder: asked for (true or early stopping), a validation set, saves aligned with evals."""
    assert loads_best_model(cfg) is loads
