"""A 2-process CPU DDP run (gloo, torchrun): every rank agrees, steps follow the per-rank rule."""

import re

import cases
import harness
import pytest
import reference
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.engines]  # multi-process: `nox -s engines`

WORLD = 2


def test_two_process_ddp_saves_at_the_per_rank_targets(e2e_root, tmp_path):
    case = cases.case("reported")
    config = harness.write_config(case, e2e_root / "ddp-patched", plugin=True)
    cfg = yaml.safe_load(config.read_text())
    cfg["plugins"] = ["cpu_ddp_shim.CpuDdpShim", *cfg["plugins"]]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    observed = harness.run_cli(
        config,
        launcher=harness.torchrun(config, WORLD),
        env={"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(harness.Path(__file__).parent)},
    )
    log = (config.parent / "train.log").read_text()
    # the data really is split: each rank sees half the batches per epoch (epoch = 1/L at step 1)
    L = observed.batches_per_epoch(case["grad_accum"])
    assert L == case["samples"] // (case["micro_batch"] * WORLD)
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"], WORLD)
    assert observed.max_steps == M
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    # rank 0 logs each save once; both ranks joined every save (the run would hang otherwise)
    assert observed.saved == expected
    assert observed.kept == expected
    assert len(re.findall(r"\[axolotl_savefix\] INFO: patched axolotl", log)) == 1  # rank 0 only
