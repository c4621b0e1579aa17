"""bench_summary.summarize: per-phase medians and per-pair ratios from hand-made timings (pure, no Axolotl)."""

import pytest
from bench_summary import summarize, table, verdict


def _pair(stock: dict, patched: dict) -> dict:
    return {"stock": stock, "patched": patched}


PAIRS = [
    _pair({"loop": 100.0, "save": 2.0}, {"loop": 101.0, "save": 2.2}),
    _pair({"loop": 120.0, "save": 2.0}, {"loop": 120.0, "save": 1.8}),  # a slow pair: both modes slower
    _pair({"loop": 110.0, "save": 4.0}, {"loop": 110.55, "save": 4.0}),
]


def test_per_phase_medians_and_the_median_of_the_per_pair_ratios():
    s = summarize(PAIRS)
    loop = s["loop"]
    assert loop["stock_median"] == 110.0
    assert loop["patched_median"] == 110.55
    assert loop["ratios"] == pytest.approx([1.01, 1.0, 1.005])
    assert loop["ratio_median"] == pytest.approx(1.005)  # not 110.55 / 110 by chance: the per-pair median
    assert (loop["ratio_min"], loop["ratio_max"]) == pytest.approx((1.0, 1.01))
    assert loop["half_spread"] == pytest.approx(0.005)
    assert loop["resolves"] is True
    assert loop["pairs"] == 3


def test_the_ratio_is_per_pair_not_of_the_medians():
    # the medians of the modes say 1.0; every pair says patched is 10% slower
    pairs = [_pair({"p": 1.0}, {"p": 1.1}), _pair({"p": 2.0}, {"p": 2.2}), _pair({"p": 1.1}, {"p": 1.21})]
    row = summarize(pairs)["p"]
    assert row["stock_median"] == 1.1 and row["patched_median"] == 1.21
    assert row["ratio_median"] == pytest.approx(1.1)
    pairs = [_pair({"p": 1.0}, {"p": 1.0}), _pair({"p": 2.0}, {"p": 1.0}), _pair({"p": 1.0}, {"p": 2.0})]
    row = summarize(pairs)["p"]
    assert row["stock_median"] == row["patched_median"] == 1.0
    assert row["ratio_median"] == 1.0 and (row["ratio_min"], row["ratio_max"]) == (0.5, 2.0)


def test_a_spread_wider_than_1_percent_does_not_resolve_it():
    save = summarize(PAIRS)["save"]
    assert (save["ratio_min"], save["ratio_max"]) == pytest.approx((0.9, 1.1))
    assert save["resolves"] is False
    assert "does not resolve 1%" in verdict(save)
    assert "resolves 1% (±0.5%)" in verdict(summarize(PAIRS)["loop"], target=1.02)
    assert verdict(summarize(PAIRS)["loop"], target=1.02).endswith("target <= 1.02: met")
    assert verdict(save, target=1.02).endswith("met by the median only")


def test_a_pair_missing_a_phase_is_not_counted_for_it():
    pairs = [*PAIRS, _pair({"loop": 100.0}, {"loop": 100.0, "save": 3.0}), _pair({"loop": 1.0, "save": None}, {"loop": 1.0})]
    s = summarize(pairs, phases=["save", "loop", "absent"])
    assert list(s) == ["save", "loop"]  # the order asked for; a phase no pair has is left out
    assert s["save"]["pairs"] == 3 and s["loop"]["pairs"] == 5


def test_a_pair_without_both_modes_is_an_error():
    with pytest.raises(ValueError, match="pair 1 lacks a mode"):
        summarize([PAIRS[0], {"stock": {"loop": 1.0}}])


def test_table_has_one_row_per_phase():
    text = table(summarize(PAIRS), {"loop": "training loop (s)"})
    assert text.splitlines()[2].startswith("training loop (s)")
    assert text.splitlines()[3].split()[-1] == "no"  # save: the 10% spread


def test_one_pair_resolves_nothing():
    # one pair has a spread of 0 by construction: it cannot say what a second pair would give
    one = [{"stock": {"whole": 10.0}, "patched": {"whole": 10.05}}]
    row = summarize(one)["whole"]
    assert row["half_spread"] == 0 and row["resolves"] is False
    assert "does not resolve" in verdict(row)


def test_own_time_counts_our_code_not_the_originals_it_wraps_nor_moved_imports():
    from bench_summary import own_time

    ours = "/x/axolotl_savefix/"
    wrapper = (ours + "preemption.py", 1, "execute_training")
    callback = (ours + "per_epoch.py", 2, "on_step_end")
    guard = (ours + "disk_full.py", 3, "get_callbacks_with_guard")
    apply = (ours + "__init__.py", 4, "apply")
    # pstats rows: (primitive calls, calls, tottime, cumtime, {caller: (pc, nc, tottime, cumtime)})
    stats = {
        wrapper: (1, 1, 0.002, 20.0, {}),
        callback: (600, 600, 0.010, 0.030, {}),
        guard: (1, 1, 0.001, 0.5, {}),
        apply: (1, 1, 0.003, 1.7, {}),
        ("/y/axolotl/train.py", 9, "execute_training"): (1, 1, 19.0, 19.99, {wrapper: (1, 1, 19.0, 19.99)}),
        ("~", 0, "<built-in method math.isclose>"): (600, 600, 0.02, 0.02, {callback: (600, 600, 0.02, 0.02)}),
        ("/y/axolotl/core/builders/base.py", 5, "get_callbacks"): (1, 1, 0.4, 0.49, {guard: (1, 1, 0.4, 0.49)}),
        ("/z/importlib/__init__.py", 6, "import_module"): (1, 1, 0.0, 1.6, {apply: (1, 1, 0.0, 1.6)}),
    }
    result = own_time(stats)
    assert result["own"] == pytest.approx(0.002 + 0.010 + 0.001 + 0.003 + 0.02)
    assert result["imports"] == pytest.approx(1.6)
    assert result["by_function"]["per_epoch.py:on_step_end"] == pytest.approx(0.030)
    assert next(iter(result["by_function"])) == "per_epoch.py:on_step_end"  # the largest first
