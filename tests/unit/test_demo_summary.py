from demo_summary import run_summary


def test_stock_misses_an_epoch_end_and_keeps_four_by_default():
    # 30 steps per epoch, 2 epochs, 4 saves per epoch asked: stock saves every 8 steps and keeps the newest 4
    line = run_summary("stock", [8, 16, 24, 32, 40, 48, 56, 60], [40, 48, 56, 60], [30, 60], 8, None)
    assert line == "stock: no checkpoint at the epoch end (30), 4 of 8 kept (save_total_limit 4 by default)"


def test_patched_keeps_every_one_with_each_epoch_end():
    saved = [8, 15, 23, 30, 38, 45, 53, 60]
    assert run_summary("patched", saved, saved, [30, 60], 8, None) == "patched: 8 of 8, each epoch end included"


def test_an_epoch_end_saved_then_rotated_away_under_an_explicit_limit():
    line = run_summary("stock", [10, 20, 30, 40], [30, 40], [20, 40], 4, 2)
    assert line == "stock: the epoch end (20) saved, then deleted, 2 of 4 kept (save_total_limit 2)"


def test_several_missing_epoch_ends():
    line = run_summary("stock", [7, 14, 21], [7, 14, 21], [10, 20], 3, None)
    assert line == "stock: no checkpoint at the epoch ends (10, 20), 3 of 3"
