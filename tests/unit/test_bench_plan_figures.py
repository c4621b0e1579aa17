"""bench_summary.plan_figures and plan_lines: the `plan` bench's medians and ratios from hand-made times (pure)."""

import pytest
from bench_summary import plan_figures, plan_lines

TIMES = {"cold": [46.0, 44.0, 52.0], "prepared": [38.0, 36.0, 37.0], "floor": [30.0, 34.0, 32.0]}


def test_median_and_min_per_series_and_the_ratios_of_the_medians_to_the_floor():
    f = plan_figures(TIMES)
    assert (f["cold"]["median_s"], f["cold"]["min_s"]) == (46.0, 44.0)
    assert (f["prepared"]["median_s"], f["prepared"]["min_s"]) == (37.0, 36.0)
    assert (f["floor"]["median_s"], f["floor"]["min_s"]) == (32.0, 30.0)
    assert f["prepared"]["repeats"] == 3 and f["cold"]["runs"] == [46.0, 44.0, 52.0]
    assert f["prepared_over_floor"] == pytest.approx(37.0 / 32.0)
    assert f["cold_over_floor"] == pytest.approx(46.0 / 32.0)


def test_an_even_count_takes_the_mean_of_the_middle_two():
    f = plan_figures({"cold": [40.0, 50.0], "prepared": [10.0, 30.0], "floor": [10.0, 10.0]})
    assert f["cold"]["median_s"] == 45.0
    assert f["prepared_over_floor"] == pytest.approx(2.0)


def test_with_the_modules_series_each_plan_series_is_also_divided_by_its_median():
    f = plan_figures({**TIMES, "modules": [20.0, 25.0, 23.0]})
    assert f["modules"]["median_s"] == 23.0
    assert f["prepared_over_modules"] == pytest.approx(37.0 / 23.0)
    assert f["cold_over_modules"] == pytest.approx(46.0 / 23.0)
    assert f["prepared_over_floor"] == pytest.approx(37.0 / 32.0)
    assert "modules" not in plan_figures(TIMES) and "cold_over_modules" not in plan_figures(TIMES)


def test_one_line_per_series_with_the_ratios_on_the_two_plan_lines():
    lines = plan_lines(plan_figures(TIMES))
    assert len(lines) == 3
    assert "median   46.0 s, min   44.0 s (3 runs); 1.44x floor (medians)" in lines[0]
    assert "median   37.0 s, min   36.0 s (3 runs); 1.16x floor (medians)" in lines[1]
    assert lines[2].startswith("floor") and "x floor" not in lines[2]
    with_modules = plan_lines(plan_figures({**TIMES, "modules": [20.0, 25.0, 23.0]}))
    assert len(with_modules) == 4
    assert "1.16x floor, 1.61x modules (medians)" in with_modules[1]


@pytest.mark.parametrize(
    "times, named",
    [
        ({"cold": [1.0], "prepared": [1.0]}, "'floor'"),
        ({"cold": [], "prepared": [1.0], "floor": [1.0]}, "'cold'"),
        ({"cold": [1.0], "prepared": [0.0], "floor": [1.0]}, "'prepared'"),
        ({"cold": [1.0], "prepared": [1.0], "floor": [1.0], "modules": []}, "'modules'"),
    ],
)
def test_a_missing_empty_or_zero_series_is_refused_by_name(times, named):
    with pytest.raises(ValueError, match=named):
        plan_figures(times)
