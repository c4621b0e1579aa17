"""Benchmark: `axolotl-savefix plan` on a synthetic 1,000,000-step config (target: under 0.1 s).

Reports the in-process plan (make_plan + render, median of 50) and the whole
command, `python -m axolotl_savefix plan CONFIG --steps-per-epoch 1000000`
(interpreter start included, median of 7). Writes JSON to argv[1]; exits 1 when
the command's median is 0.1 s or more.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from axolotl_savefix.plan import Settings, make_plan, render

STEPS = 1_000_000
TARGET_S = 0.1
CONFIG = {
    "num_epochs": 1,
    "saves_per_epoch": 10,
    "evals_per_epoch": 20,
    "val_set_size": 0.05,
    "gradient_accumulation_steps": 4,
}


def main(out: str) -> int:
    settings = Settings.from_config(CONFIG)
    in_process = []
    for _ in range(50):
        start = time.perf_counter()
        render(make_plan(settings, STEPS * settings.grad_accum, STEPS))
        in_process.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yml"
        config.write_text(json.dumps({**CONFIG, "output_dir": str(Path(tmp) / "out")}))  # JSON is YAML
        cmd = [sys.executable, "-m", "axolotl_savefix", "plan", str(config), "--steps-per-epoch", str(STEPS)]
        whole = []
        for _ in range(7):
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            whole.append(time.perf_counter() - start)
            if proc.returncode not in (0, 1):
                raise SystemExit(proc.stderr)
    result = {
        "steps": STEPS,
        "plan_in_process_median_s": statistics.median(in_process),
        "plan_command_median_s": statistics.median(whole),
        "plan_command_max_s": max(whole),
        "target_s": TARGET_S,
        "python": sys.version.split()[0],
    }
    Path(out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(proc.stdout)
    return 0 if result["plan_command_median_s"] < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench-plan.json"))
