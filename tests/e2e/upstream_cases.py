"""The e2e cases on an Axolotl built from the upstream pull request, with no axolotl_savefix at all.

Run only by ``nox -s upstream``, which passes this file by name (its name keeps it out of
the default collection), in a venv whose Axolotl has docs/upstream/axolotl-per-epoch.diff
applied. Expected steps come from tests/reference.py, as for the patched runs.
"""

import importlib.util

import cases
import harness
import pytest
import reference

pytestmark = pytest.mark.e2e


def test_our_package_is_not_there_and_axolotl_has_the_fix():
    assert importlib.util.find_spec("axolotl_savefix") is None
    assert importlib.util.find_spec("axolotl.utils.callbacks.per_epoch") is not None


def _observe(name, root):
    case = cases.case(name)
    config = harness.write_config(case, root / f"upstream-{name}", plugin=False)
    if case["adapter"]:  # own process, as in test_matrix; this venv has no `accelerate` script of its own
        observed = harness.run_cli(config, "--launcher", "python")
    else:
        observed = harness.run_in_process(config)
    L = observed.batches_per_epoch(case["grad_accum"])
    return case, observed, L


@pytest.mark.parametrize("name", list(cases.CASES))
def test_exact_checkpoints_from_upstream_code(name, e2e_root):
    case, observed, L = _observe(name, e2e_root)
    saved = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], observed.max_steps)
    assert observed.saved == saved
    assert observed.kept == reference.kept(saved, case["save_total_limit"])


@pytest.mark.parametrize("name", list(cases.EVAL_CASES))
def test_exact_evals_from_upstream_code(name, e2e_root):
    case, observed, L = _observe(name, e2e_root)
    G, M = case["grad_accum"], observed.max_steps
    saved = reference.patched_saves(L, G, case["saves_per_epoch"], M)
    assert observed.saved == saved
    assert observed.evals == reference.patched_evals(L, G, case["evals_per_epoch"], M)
    if case["early_stopping_patience"]:
        best = reference.best_step(saved, {s: observed.eval_loss(s) for s in observed.evals})
        assert best is not None and observed.best_model_checkpoint.endswith(f"checkpoint-{best}")
        assert observed.kept == reference.kept_with_best(saved, case["save_total_limit"], best)
