"""The benchmark's arithmetic (pure: no Axolotl, no torch): paired stock/patched timings -> per-phase medians and ratios.

One *pair* is one stock run and one patched run made back to back (tests/e2e/bench.py alternates
their order, ABBA); each maps a phase name to seconds. Per phase, :func:`summarize` gives the
median of each mode, the median of the per-pair ratios patched/stock (the number the benchmark
reports: a pair's two runs saw the same load, so their ratio cancels most of it), and the min–max
of those ratios (the spread).

The spread decides what a result can claim: a median ratio is stated to 1% ("resolves 1%") only
when half the min–max spread of its per-pair ratios is at most 0.01, i.e. every pair lies within
±1% of the middle of the range, and there are at least two pairs (one pair has no spread
to read). A wider spread means the pairs disagree by more than the 1% the
number would claim, whatever its median.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

RESOLUTION = 0.01  # what the benchmark must resolve: 1% of a phase


def summarize(
    pairs: Sequence[Mapping[str, Mapping[str, float | None]]],
    phases: Iterable[str] | None = None,
    resolution: float = RESOLUTION,
) -> dict[str, dict[str, Any]]:
    """Per phase: ``stock_median``, ``patched_median`` (seconds), ``ratio_median``, ``ratio_min``,
    ``ratio_max`` (patched/stock, per pair), ``pairs`` (counted), ``half_spread`` ((max - min) / 2)
    and ``resolves`` (``half_spread <= resolution`` over at least 2 pairs).

    ``pairs``: ``[{"stock": {phase: seconds}, "patched": {phase: seconds}}, ...]``. A pair counts
    for a phase only when both runs have it, as a number above 0 (a run may lack a phase, e.g. no
    save). ``phases``: the order of the result (default: as first met). A phase no pair has is left
    out. Raises ValueError for a pair without both modes.
    """
    order: list[str] = list(phases) if phases is not None else []
    if phases is None:
        for pair in pairs:
            for mode in ("stock", "patched"):
                order.extend(p for p in pair.get(mode, {}) if p not in order)
    out: dict[str, dict[str, Any]] = {}
    for phase in order:
        stock, patched, ratios = [], [], []
        for n, pair in enumerate(pairs):
            if "stock" not in pair or "patched" not in pair:
                raise ValueError(f"pair {n} lacks a mode: it has {sorted(pair)}, needs 'stock' and 'patched'")
            s, p = pair["stock"].get(phase), pair["patched"].get(phase)
            if s is None or p is None or s <= 0 or p <= 0:
                continue
            stock.append(s)
            patched.append(p)
            ratios.append(p / s)
        if not ratios:
            continue
        low, high = min(ratios), max(ratios)
        half = (high - low) / 2
        out[phase] = {
            "stock_median": statistics.median(stock),
            "patched_median": statistics.median(patched),
            "ratio_median": statistics.median(ratios),
            "ratio_min": low,
            "ratio_max": high,
            "half_spread": half,
            "resolves": len(ratios) >= 2 and half <= resolution,
            "pairs": len(ratios),
            "ratios": ratios,
        }
    return out


def verdict(row: Mapping[str, Any], target: float | None = None, resolution: float = RESOLUTION) -> str:
    """One line on what a phase's row can claim: the median ratio, its spread, and whether it resolves ``resolution``."""
    text = f"{row['ratio_median']:.3f} (min {row['ratio_min']:.3f}, max {row['ratio_max']:.3f}, {row['pairs']} pairs): " + (
        f"resolves {resolution:.0%} (±{row['half_spread']:.1%})"
        if row["resolves"]
        else f"does not resolve {resolution:.0%}: one pair has no spread to read"
        if row["pairs"] < 2
        else f"does not resolve {resolution:.0%}: the pairs spread ±{row['half_spread']:.1%}"
    )
    if target is not None:
        met = row["ratio_median"] <= target
        text += f"; target <= {target}: {'met' if met and row['resolves'] else 'met by the median only' if met else 'missed'}"
    return text


def table(summary: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str] | None = None) -> str:
    """A plain-text table of :func:`summarize`'s result (seconds; ratio median, min, max; resolves 1%)."""
    labels = labels or {}
    head = f"{'phase':<34} {'stock s':>9} {'patched s':>9} {'ratio':>7} {'min':>7} {'max':>7} {'n':>3}  1%?"
    lines = [head, "-" * len(head)]
    for phase, row in summary.items():
        lines.append(
            f"{labels.get(phase, phase):<34} {row['stock_median']:>9.3f} {row['patched_median']:>9.3f} "
            f"{row['ratio_median']:>7.3f} {row['ratio_min']:>7.3f} {row['ratio_max']:>7.3f} {row['pairs']:>3}  "
            + ("yes" if row["resolves"] else "no")
        )
    return "\n".join(lines)


IMPORT_MACHINERY = {"import_module", "exec_module", "_find_and_load", "_handle_fromlist", "_call_with_frames_removed"}


def own_time(stats: dict, package: str = "axolotl_savefix/") -> dict[str, Any]:
    """What our code itself spent in a profiled run (``pstats.Stats(...).stats``), seconds.

    ``own``: the tottime of every function of ``package``, plus what those functions called outside
    the package, except (a) the original each wrapper wraps (a callee with the wrapper's own name,
    or ``get_callbacks`` under a ``get_callbacks_with_*``: stock does that work too) and (b) import
    machinery, counted apart as ``imports``: the modules our ``apply()`` imports are ones a stock
    run imports too, only earlier (the benchmark checks that with the module counts).
    ``by_function``: ``own`` per function of ours (the largest first).
    """
    own: dict[str, float] = {}
    imports = 0.0
    for key, (_, _, tottime, _, callers) in stats.items():
        name = key[2]
        if package in key[0]:
            label = f"{key[0].split(package)[1]}:{name}"
            own[label] = own.get(label, 0.0) + tottime
            continue
        for caller, (_, _, _, cumtime) in callers.items():
            if package not in caller[0]:
                continue
            label = f"{caller[0].split(package)[1]}:{caller[2]}"
            if name in IMPORT_MACHINERY:
                imports += cumtime
            elif name == caller[2] or (name == "get_callbacks" and caller[2].startswith("get_callbacks_with")):
                continue  # the wrapped original: stock's own work
            else:
                own[label] = own.get(label, 0.0) + cumtime
    by_function = dict(sorted(own.items(), key=lambda item: -item[1]))
    return {"own": sum(own.values()), "imports": imports, "by_function": by_function}


PLAN_RUNS = ("cold", "prepared", "floor")  # `nox -s bench -- plan`: the series it needs (tests/e2e/bench.py)
PLAN_FLOORS = ("floor", "modules")  # what the two plan series are divided by; "modules" is optional
PLAN_LABELS = {
    "cold": "plan, no prepared data set",
    "prepared": "plan, data set already prepared",
    "floor": 'floor: python -c "import axolotl"',
    "modules": "the Axolotl modules plan imports",
}


def plan_figures(seconds: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The ``plan`` part's summary: per series, ``median_s``, ``min_s``, ``repeats`` and ``runs`` (seconds);
    then ``prepared_over_floor`` and ``cold_over_floor`` (and with a ``modules`` series,
    ``prepared_over_modules`` and ``cold_over_modules``): the series' medians over that floor's median.

    ``seconds``: ``{"cold": [...], "prepared": [...], "floor": [...]}`` and optionally ``"modules"``,
    wall seconds per repeat. Raises ValueError naming the series when a needed one is missing, or one
    given is empty or holds a time that is not above 0.
    """
    out: dict[str, Any] = {}
    for name in (*PLAN_RUNS, *(n for n in PLAN_FLOORS if n not in PLAN_RUNS and n in seconds)):
        runs = list(seconds.get(name, ()))
        if not runs:
            raise ValueError(f"plan bench: no {name!r} times (got series {sorted(seconds)}); each of {PLAN_RUNS} needs one or more")
        if any(not s > 0 for s in runs):
            raise ValueError(f"plan bench: {name!r} holds a time not above 0 s: {runs}; a wall time is positive")
        out[name] = {"median_s": statistics.median(runs), "min_s": min(runs), "repeats": len(runs), "runs": runs}
    for floor in (f for f in PLAN_FLOORS if f in out):
        for name in ("prepared", "cold"):
            out[f"{name}_over_{floor}"] = out[name]["median_s"] / out[floor]["median_s"]
    return out


def plan_lines(figures: Mapping[str, Any]) -> list[str]:
    """One human line per series of :func:`plan_figures`' result: median and min seconds, and the ratios to the floors."""
    lines = []
    for name in (n for n in (*PLAN_RUNS, "modules") if n in figures):
        row = figures[name]
        ratios = [f"{figures[f'{name}_over_{f}']:.2f}x {f}" for f in PLAN_FLOORS if f"{name}_over_{f}" in figures]
        lines.append(
            f"{PLAN_LABELS[name]:<36} median {row['median_s']:6.1f} s, min {row['min_s']:6.1f} s ({row['repeats']} runs)"
            + (f"; {', '.join(ratios)} (medians)" if ratios else "")
        )
    return lines
