"""Resume an Axolotl run from a mid-epoch checkpoint: nothing saved twice, nothing skipped."""

import cases
import harness
import pytest
import reference

import axolotl_savefix

pytestmark = pytest.mark.e2e


def test_resume_mid_epoch(e2e_root):
    case = cases.case("reported")
    L = case["samples"] // case["micro_batch"]
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"])
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    stop = expected[0]  # the first checkpoint, a quarter into epoch 1

    assert axolotl_savefix.apply()
    try:
        first = harness.run_in_process(harness.write_config(case, e2e_root / "resume-first", plugin=False))
        assert first.saved == expected
        config = harness.write_config(case, e2e_root / "resume-second", plugin=False)
        harness.resume_from_copy(config, first.output_dir, stop)
        second = harness.run_in_process(config)
    finally:
        axolotl_savefix.revert()
    assert second.saved == [s for s in expected if s > stop]
    assert second.kept == expected  # the resumed-from checkpoint plus every later one
