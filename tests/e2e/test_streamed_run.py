"""A real streamed run (``streaming: true``, a local JSON file, ``max_steps``): the plugin saves what stock saves.

Without a dataset length Transformers counts the whole ``max_steps`` run as one epoch, so the per-epoch
rule would save twice (j/2 of the run: 10 and 20) where stock's ratio ``1/(saves_per_epoch * num_epochs)``
of ``max_steps`` saves 7 times. Expected steps come from tests/reference.py (the ratio), not from a run.
"""

import cases
import harness
import pytest
import reference

pytestmark = [pytest.mark.e2e, pytest.mark.cli]

STREAMED = {"samples": 60, "saves_per_epoch": 2, "num_epochs": 4, "max_steps": 20}


def _config(e2e_root, name, *, plugin):
    config = harness.write_config({**cases.BASE, **STREAMED, "name": name}, e2e_root / name, plugin=plugin)
    return harness.variant(config, name, streaming=True)


def test_streamed_run_saves_at_stocks_ratio_of_max_steps_and_keeps_them_all(e2e_root):
    case = {**cases.BASE, **STREAMED}
    G, M = case["grad_accum"], case["max_steps"]
    # Transformers' epoch without a length: the whole run, M * G batches
    expected = reference.stock_saves(M * G, G, case["saves_per_epoch"], case["num_epochs"], M)
    assert expected == [3, 6, 9, 12, 15, 18, 20]  # interval ceil(20 / 8) = 3, and the last step

    stock = harness.run_cli(_config(e2e_root, "streamed-stock", plugin=False))
    patched_config = _config(e2e_root, "streamed-patched", plugin=True)
    patched = harness.run_cli(patched_config)

    assert stock.saved == patched.saved == expected
    assert stock.kept == expected[-reference.stock_limit(None) :]  # stock's default limit of 4
    assert patched.kept == expected  # save_total_limit unset: every checkpoint of stock's schedule, counted right
    log = (patched_config.parent / "train.log").read_text()
    assert log.count("saves_per_epoch keeps Axolotl's share of max_steps") == 1  # said once, naming the one key
