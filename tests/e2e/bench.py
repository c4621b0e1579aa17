"""Benchmark: what the plugin costs a run.

* whole process: ``axolotl train`` with and without the plugin line, as a user runs
  it (interpreter start, imports, config, training, saves), in pairs after one
  warm-up pair; the order inside a pair alternates (ABBA) so drift cancels; the
  median of the per-pair ratios patched/stock is the number (target: <= 1.01);
* training in one interpreter (``apply()`` vs stock, no process start);
* the per-step cost of the save decision.

Prints a table; writes JSON to argv[1] (default bench.json)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import cases  # noqa: E402
import harness  # noqa: E402

import axolotl_savefix  # noqa: E402

REPEATS = 3
PAIRS = 6
TARGET_RATIO = 1.01


def decision_cost_us(calls: int = 200_000) -> dict[str, float]:
    from transformers import TrainerControl
    from transformers.trainer_callback import DefaultFlowCallback

    from axolotl_savefix.save_decision import SavesPerEpochCallback

    args = SimpleNamespace(
        save_strategy="steps",
        logging_strategy="steps",
        logging_steps=1,
        logging_first_step=False,
        eval_strategy="no",
        eval_delay=0,
    )
    state = SimpleNamespace(epoch=0.0, global_step=0, max_steps=10**9, save_steps=0, eval_steps=0, logging_steps=1)
    control = TrainerControl()
    ours, flow = SavesPerEpochCallback(4), DefaultFlowCallback()

    def step(cb):
        state.global_step += 1
        state.epoch = state.global_step / 30
        cb.on_step_end(args, state, control)

    return {
        "savefix_us_per_step": timeit.timeit(lambda: step(ours), number=calls) / calls * 1e6,
        "transformers_flow_us_per_step": timeit.timeit(lambda: step(flow), number=calls) / calls * 1e6,
    }


def wall_times(name: str) -> dict[str, float]:
    case = cases.case(name)
    root = Path(tempfile.mkdtemp(prefix="savefix-bench-"))
    times: dict[str, list[float]] = {"stock": [], "patched": []}
    for i in range(REPEATS + 1):  # the first round warms caches (prepared data, imports) and is dropped
        for variant in ("stock", "patched"):
            if variant == "patched":
                axolotl_savefix.apply()
            config = harness.write_config(case, root / f"{variant}-{i}", plugin=False)
            start = time.perf_counter()
            try:
                harness.run_in_process(config)
            finally:
                axolotl_savefix.revert()
            if i:
                times[variant].append(time.perf_counter() - start)
    stock, patched = statistics.median(times["stock"]), statistics.median(times["patched"])
    return {
        "case": name,
        "repeats": REPEATS,
        "stock_s": stock,
        "patched_s": patched,
        "ratio_patched_over_stock": patched / stock,
        "all": times,
    }


def whole_process(name: str, pairs: int = PAIRS) -> dict:
    case = cases.case(name)
    root = Path(tempfile.mkdtemp(prefix="savefix-bench-cli-"))
    ratios, times = [], {"stock": [], "patched": []}
    for i in range(pairs + 1):  # pair 0 warms the prepared data set and the OS caches; dropped
        order = ("stock", "patched") if i % 2 else ("patched", "stock")
        took = {}
        for variant in order:
            config = harness.write_config(case, root / f"{variant}-{i}", plugin=variant == "patched")
            start = time.perf_counter()
            harness.run_cli(config)
            took[variant] = time.perf_counter() - start
        if i:
            ratios.append(took["patched"] / took["stock"])
            for variant, seconds in took.items():
                times[variant].append(seconds)
    return {
        "case": name,
        "pairs": pairs,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "stock_median_s": statistics.median(times["stock"]),
        "patched_median_s": statistics.median(times["patched"]),
        "ratios": ratios,
        "all": times,
        "target_ratio": TARGET_RATIO,
    }


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
    result = {"decision": decision_cost_us(), "process": whole_process("reported"), "train": wall_times("reported")}
    d, t, w = result["decision"], result["train"], result["process"]
    print(f"\n{'measure':<46} {'value':>10}")
    print(f"{'save decision, axolotl_savefix (us/step)':<46} {d['savefix_us_per_step']:>10.2f}")
    print(f"{'DefaultFlowCallback, transformers (us/step)':<46} {d['transformers_flow_us_per_step']:>10.2f}")
    print(f"{'train wall time, stock (s, median of ' + str(REPEATS) + ')':<46} {t['stock_s']:>10.2f}")
    print(f"{'train wall time, patched (s, median of ' + str(REPEATS) + ')':<46} {t['patched_s']:>10.2f}")
    print(f"{'ratio patched / stock':<46} {t['ratio_patched_over_stock']:>10.3f}")
    print(f"{'axolotl train process, stock (s, median)':<46} {w['stock_median_s']:>10.2f}")
    print(f"{'axolotl train process, patched (s, median)':<46} {w['patched_median_s']:>10.2f}")
    print(
        f"{'process ratio patched / stock, median of ' + str(w['pairs']) + ' pairs':<46} {w['ratio_median']:>10.3f}"
        f"  (min {w['ratio_min']:.3f}, max {w['ratio_max']:.3f}; target <= {TARGET_RATIO})"
    )
    print("(patched saves 8 checkpoints and keeps 8; stock saves 8 and keeps 4)")
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
