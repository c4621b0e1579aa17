import pytest

from axolotl_savefix.checks import SaveFixConfigError, check_save_config


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({"saves_per_epoch": 0}, ["saves_per_epoch: 0", "positive integer"]),
        ({"saves_per_epoch": -2}, ["saves_per_epoch: -2", "positive integer"]),
        ({"saves_per_epoch": 2.5}, ["saves_per_epoch: 2.5", "positive integer"]),
        ({"saves_per_epoch": "4"}, ["saves_per_epoch: '4'"]),
        (
            {"saves_per_epoch": 4, "save_steps": 10},
            ["saves_per_epoch: 4", "save_steps: 10", "remove save_steps"],
        ),
        (
            {"saves_per_epoch": 4, "save_strategy": "epoch"},
            ["save_strategy: 'epoch'", "Remove save_strategy"],
        ),
        ({"saves_per_epoch": 4, "save_strategy": "no"}, ["save_strategy: 'no'"]),
        ({"saves_per_epoch": 4, "save_strategy": "best"}, ["save_strategy: 'best'"]),
        ({"save_total_limit": -1}, ["save_total_limit: -1", "0 to keep every checkpoint"]),
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
    ],
)
def test_good_settings_pass(cfg):
    check_save_config(cfg)
