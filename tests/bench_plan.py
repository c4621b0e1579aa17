"""Benchmark: `axolotl-savefix plan` on synthetic 1,000,000-step configs (target: under 0.1 s).

Two configs: 10 saves and 20 evals per epoch, and ``saves_per_epoch: 10**9``
(more targets than steps: the schedule must cost O(min(k, S)) per epoch, not
O(k)); its plan lists 3000 saves. (A plan that lists a million saves costs
what a million-entry list costs, about 0.15 s in process: that is O(saves),
not O(k).) For each: the in-process plan (make_plan + render, median of 50) and the
whole command, `python -m axolotl_savefix plan CONFIG --steps-per-epoch N`
(interpreter start included, median of 7). Writes JSON to argv[1]; exits 1 when
a command's median is 0.1 s or more.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from axolotl_savefix.rules.plan import Settings, make_plan, render

STEPS = 1_000_000
TARGET_S = 0.1
CONFIGS = {
    "1M steps, 10 saves and 20 evals per epoch": (
        STEPS,
        {"num_epochs": 1, "saves_per_epoch": 10, "evals_per_epoch": 20, "val_set_size": 0.05, "gradient_accumulation_steps": 4},
    ),
    "saves_per_epoch 10**9, 1000 steps per epoch, 3 epochs": (
        1000,
        {"num_epochs": 3, "saves_per_epoch": 10**9, "evals_per_epoch": 10**9, "val_set_size": 0.05},
    ),
}


def bench(steps: int, config_keys: dict) -> tuple[dict, str]:
    settings = Settings.from_config(config_keys)
    in_process = []
    for _ in range(50):
        start = time.perf_counter()
        render(make_plan(settings, steps * settings.grad_accum, round(steps * settings.num_epochs)))
        in_process.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yml"
        config.write_text(json.dumps({**config_keys, "output_dir": str(Path(tmp) / "out")}))  # JSON is YAML
        cmd = [sys.executable, "-m", "axolotl_savefix", "plan", str(config), "--steps-per-epoch", str(steps)]
        whole = []
        for _ in range(7):
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            whole.append(time.perf_counter() - start)
            if proc.returncode not in (0, 1):
                raise SystemExit(proc.stderr)
    result = {
        "steps_per_epoch": steps,
        "config": config_keys,
        "plan_in_process_median_s": statistics.median(in_process),
        "plan_command_median_s": statistics.median(whole),
        "plan_command_max_s": max(whole),
    }
    return result, proc.stdout


def main(out: str) -> int:
    results = {"target_s": TARGET_S, "python": sys.version.split()[0], "cases": {}}
    for name, (steps, config_keys) in CONFIGS.items():
        result, text = bench(steps, config_keys)
        results["cases"][name] = result
        print(
            f"{name}: command median {result['plan_command_median_s']:.3f} s, max {result['plan_command_max_s']:.3f} s, "
            f"in process {result['plan_in_process_median_s'] * 1e3:.2f} ms"
        )
        print(text)
    Path(out).write_text(json.dumps(results, indent=2))
    slow = [name for name, r in results["cases"].items() if r["plan_command_median_s"] >= TARGET_S]
    if slow:
        print(f"over the {TARGET_S} s target: {slow}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench-plan.json"))
