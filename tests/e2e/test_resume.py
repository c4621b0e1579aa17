"""Resume an Axolotl run from a mid-epoch checkpoint: nothing saved twice, nothing skipped."""

import json
import shutil

import cases
import harness
import pytest
import reference
import yaml

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
        # a fresh output dir holding only the checkpoint to resume from: as if the run had died there
        config = harness.write_config(case, e2e_root / "resume-second", plugin=False)
        cfg = yaml.safe_load(config.read_text())
        checkpoint = harness.Path(cfg["output_dir"]) / f"checkpoint-{stop}"
        shutil.copytree(first.output_dir / f"checkpoint-{stop}", checkpoint)
        assert 0 < json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] < 1
        cfg["resume_from_checkpoint"] = str(checkpoint)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        second = harness.run_in_process(config)
    finally:
        axolotl_savefix.revert()
    assert second.saved == [s for s in expected if s > stop]
    assert second.kept == expected  # the resumed-from checkpoint plus every later one
