"""Every case of the table on real Axolotl, stock and patched, in this one interpreter.

Expected saves and kept checkpoints come from tests/reference.py (a brute-force
walk of the Trainer's loop), never from axolotl_savefix.rules.schedule.
"""

import math
import os

import cases
import harness
import pytest
import reference

import axolotl_savefix

pytestmark = pytest.mark.e2e


def expected_for(case, variant, batches_per_epoch, max_steps):
    L, G, k = batches_per_epoch, case["grad_accum"], case["saves_per_epoch"]
    if variant == "stock":
        saved = reference.stock_saves(L, G, k, case["num_epochs"], max_steps)
        return saved, reference.kept(saved, reference.stock_limit(case["save_total_limit"]))
    saved = reference.patched_saves(L, G, k, max_steps)
    return saved, reference.kept(saved, case["save_total_limit"])  # unset or 0: keep all


@pytest.mark.parametrize("variant", ["stock", "patched"])
# adapter cases run `axolotl train` in their own process (below): the `cli` session's; the reported
# case stays in `tests`, the rest of the table is the `matrix` session's
@pytest.mark.parametrize("name", [pytest.param(n, marks=cases.session_mark(n)) for n in cases.CASES])
def test_exact_checkpoints(name, variant, e2e_root):
    case = cases.case(name)
    # Axolotl's LoRA kernels patch the attention classes for the rest of the process (as in a
    # user's run), so adapter cases get their own process: `axolotl train`, the plugin line for patched.
    own_process = bool(case["adapter"])
    config = harness.write_config(
        case,
        e2e_root / f"{name}-{variant}",
        plugin=own_process and variant == "patched",
        device=os.environ.get("SAVEFIX_DEVICE", "cpu"),
    )
    if own_process:
        observed = harness.run_cli(config)
    else:
        if variant == "patched":
            assert axolotl_savefix.apply()
        try:
            observed = harness.run_in_process(config)
        finally:
            axolotl_savefix.revert()

    L = observed.batches_per_epoch(case["grad_accum"])
    if not case["sample_packing"]:
        # the harness's own assumptions about the run, checked against what ran
        assert L == math.ceil(case["samples"] / case["micro_batch"])
        assert observed.max_steps == (
            case["max_steps"]
            or reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"])
        )
    saved, kept = expected_for(case, variant, L, observed.max_steps)
    harness.record(f"{name}-{variant}", observed, saved=saved, kept=kept)
    assert observed.saved == saved
    assert observed.kept == kept
    if case["adapter"]:
        for step in observed.kept:
            assert (observed.output_dir / f"checkpoint-{step}" / "adapter_model.safetensors").exists()
