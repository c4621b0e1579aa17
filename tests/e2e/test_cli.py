"""The real `axolotl train` CLI with the one YAML line that enables the fix."""

import json
import os
import subprocess
import sys

import cases
import fixture
import harness
import pytest
import reference

pytestmark = [pytest.mark.e2e, pytest.mark.cli]


def test_plugin_line_through_the_axolotl_cli(e2e_root):
    case = cases.case("reported")
    config = harness.write_config(case, e2e_root / "cli-patched", plugin=True)
    observed = harness.run_cli(config, forked=False)  # the real `axolotl train` entry point
    L = case["samples"] // case["micro_batch"]
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"])
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    assert observed.saved == expected
    assert observed.kept == expected  # save_total_limit unset: every scheduled checkpoint is kept
    log = (config.parent / "train.log").read_text()
    assert log.count("[axolotl_savefix] INFO: patched axolotl") == 1


def test_evals_per_epoch_zero_with_the_plugin_line_trains_and_saves_what_the_plan_says(e2e_root):
    """Axolotl's examples write `evals_per_epoch: 0` for "no per-epoch evals": stock accepts it, so must we."""
    case = cases.case("evals_zero")
    config = harness.write_config(case, e2e_root / "cli-evals-zero", plugin=True)
    # the plan as a user gets it, in its own process (loading a config with the plugin line applies the patches)
    proc = subprocess.run(
        [sys.executable, "-m", "axolotl_savefix", "plan", str(config), "--json"],
        env={**os.environ, **fixture.OFFLINE},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # 0: every requested checkpoint saved and kept
    plan = json.loads(proc.stdout)
    assert plan["patched_run"]
    observed = harness.run_cli(config, forked=False)  # the real `axolotl train` entry point
    assert plan["max_steps"] == observed.max_steps
    L = observed.batches_per_epoch(case["grad_accum"])
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], observed.max_steps)
    assert observed.saved == plan["patched"]["saved"] == expected
    assert observed.kept == plan["patched"]["kept"] == observed.saved
    assert observed.evals == plan["patched"]["evals"] == []  # off: no eval_steps, as in stock
    assert "evals_per_epoch: 0 is off" in "\n".join(plan["notes"])
