"""The real `axolotl train` CLI with the one YAML line that enables the fix."""

import cases
import harness
import pytest
import reference

pytestmark = pytest.mark.e2e


def test_plugin_line_through_the_axolotl_cli(e2e_root):
    case = cases.case("reported")
    config = harness.write_config(case, e2e_root / "cli-patched", plugin=True)
    observed = harness.run_cli(config)
    L = case["samples"] // case["micro_batch"]
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"])
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    assert observed.saved == expected
    assert observed.kept == expected  # save_total_limit unset: every scheduled checkpoint is kept
    log = (config.parent / "train.log").read_text()
    assert log.count("[axolotl_savefix] INFO: patched axolotl") == 1
