"""The e2e cases on an Axolotl built from the upstream series, with no axolotl_savefix at all.

Run only by ``nox -s upstream``, which passes this file by name (its name keeps it out of
the default collection), in a venv whose Axolotl has the first ``SAVEFIX_UPSTREAM_PATCHES``
patches of docs/upstream/series/ applied; the session selects the tests that patch count
covers (``-k``). What each case must do depends on which patches are in (expected steps
always come from tests/reference.py):

1. exact saves per epoch (kept: upstream's old limit of 4 until patch 3);
2. exact evals per epoch and the best-model alignment;
3. ``save_total_limit``: unset keeps what fits, 0 keeps all;
4. resume skips an incomplete checkpoint (one run killed mid-save, then resumed);
5., 6. (the resume agreement across nodes, a full disk): not seen by one process on a roomy disk;
7. a preemption notice (SIGTERM) saves a checkpoint at the step and exits 143; the rerun resumes there;
8. a shorter run in a reused output_dir stops before training (issue 22's first report); a longer one resumes.
"""

import importlib.util
import json
import os
import sys

import cases
import harness
import pytest
import reference
import yaml

pytestmark = pytest.mark.e2e

PATCHES = int(os.environ.get("SAVEFIX_UPSTREAM_PATCHES", "4"))
HERE = harness.Path(__file__).parent


def test_our_package_is_not_there_and_axolotl_has_the_fix():
    assert importlib.util.find_spec("axolotl_savefix") is None
    assert importlib.util.find_spec("axolotl.utils.callbacks.per_epoch") is not None


def _observe(name, root):
    case = cases.case(name)
    config = harness.write_config(case, root / f"upstream-{PATCHES}-{name}", plugin=False)
    if case["adapter"]:  # own process, as in test_matrix; this venv has no `accelerate` script of its own
        observed = harness.run_cli(config, "--launcher", "python")
    else:
        observed = harness.run_in_process(config)
    L = observed.batches_per_epoch(case["grad_accum"])
    return case, observed, L


def _kept(saved, limit):
    # before patch 3, upstream's limit: unset and 0 become 4
    return reference.kept(saved, limit if PATCHES >= 3 else reference.stock_limit(limit))


@pytest.mark.parametrize("name", list(cases.CASES))
def test_exact_checkpoints_from_upstream_code(name, e2e_root):
    case, observed, L = _observe(name, e2e_root)
    saved = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], observed.max_steps)
    assert observed.saved == saved
    assert observed.kept == _kept(saved, case["save_total_limit"])


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
    else:
        assert observed.kept == _kept(saved, case["save_total_limit"])


def test_killed_mid_save_resumes_from_upstream_code(e2e_root):
    """tests/e2e/test_preemption.py's case, on upstream code: killed while writing the optimizer."""
    case = cases.case("reported")
    L = case["samples"] // case["micro_batch"]
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"])
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    cut = expected[2]
    config = harness.write_config(case, e2e_root / "upstream-preempt", plugin=False)
    cfg = yaml.safe_load(config.read_text())
    cfg.update(plugins=["kill_shim.KillShim"], auto_resume_from_checkpoints=True)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {"PYTHONPATH": str(HERE)}
    out = harness.output_dir(config)
    launch = ("--launcher", "python")
    code, first = harness.run_cli_raw(config, *launch, env={**env, "SAVEFIX_KILL_AT": f"{cut}:optimizer"}, log_name="first.log")
    assert code != 0 and "[kill_shim] SIGKILL" in first
    code, second = harness.run_cli_raw(config, *launch, env=env, log_name="second.log")
    assert code == 0, second[-4000:]
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in expected if s > expected[1]]
    assert observed.kept == expected
    assert (out / f"incomplete-checkpoint-{cut}").is_dir()
    assert second.count(f"checkpoint-{cut} is incomplete") == 1


def test_preempted_by_sigterm_resumes_from_upstream_code(e2e_root):
    """tests/e2e/test_preemption_notice.py's shape, on upstream code: SIGTERM at a step off the schedule."""
    case = cases.case("reported")
    L = case["samples"] // case["micro_batch"]
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"])
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    step = expected[0] + 2  # off the schedule, scheduled saves ahead
    assert step not in expected
    config = harness.write_config(case, e2e_root / "upstream-sigterm", plugin=False)
    cfg = yaml.safe_load(config.read_text())
    cfg.update(plugins=["signal_shim.SignalShim"], auto_resume_from_checkpoints=True)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = harness.output_dir(config)
    # one process, no launcher in between: what a scheduler's notice reaches (as test_preemption_notice.py)
    launch = [str(harness.Path(sys.executable).parent / "python"), "-m", "axolotl.cli.train", str(config)]
    env = {"PYTHONPATH": str(HERE)}
    code, first = harness.run_cli_raw(
        config, launcher=launch, env={**env, "SAVEFIX_SIGNAL_AT": f"{step}:SIGTERM"}, log_name="first.log"
    )
    assert code == 128 + 15, first[-4000:]
    assert f"[signal_shim] SIGTERM at the end of step {step}" in first
    assert json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
    assert harness.observe(out, first).saved == [s for s in expected if s < step] + [step]
    code, second = harness.run_cli_raw(config, launcher=launch, env=env, log_name="second.log")
    assert code == 0, second[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{step}'}" in second
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in expected if s > step]
    # an ordinary checkpoint to rotation: patch 3's unset limit keeps the len(expected) scheduled ones' count
    assert observed.kept == reference.kept(sorted([*expected, step]), len(expected))


def test_a_shorter_run_in_a_reused_output_dir_stops_past_the_end_on_upstream_code(e2e_root):
    """Issue 22's first report on upstream code: run 2 (1 epoch) into run 1's (2 epochs) checkpoints; run 3 (3 epochs)."""
    case = cases.case("reported")
    L, G = case["samples"] // case["micro_batch"], case["grad_accum"]
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], G, case["num_epochs"])
    config = harness.write_config(case, e2e_root / "upstream-reused", plugin=False)
    out = harness.output_dir(config)
    launch = [str(harness.Path(sys.executable).parent / "python"), "-m", "axolotl.cli.train", str(config)]

    def run(log_name, **changes):
        cfg = yaml.safe_load(config.read_text())
        cfg.update(auto_resume_from_checkpoints=True, **changes)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return harness.run_cli_raw(config, launcher=launch, log_name=log_name)

    code, first = run("first.log")
    assert code == 0, first[-4000:]
    saved = reference.patched_saves(L, G, case["saves_per_epoch"], M)
    assert harness.observe(out, first).saved == saved
    shorter = reference.axolotl_max_steps(case["samples"], case["micro_batch"], G, 1)
    code, second = run("second.log", num_epochs=1, learning_rate=0.0005)
    assert code != 0
    assert f"checkpoint-{M} is at step {M}, at or past the end of this run ({shorter} steps" in second
    assert harness.observe(out, second).saved == []  # stopped before training: nothing written
    longer = reference.axolotl_max_steps(case["samples"], case["micro_batch"], G, 3)
    code, third = run("third.log", num_epochs=3, learning_rate=0.001)
    assert code == 0, third[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{M}'}" in third
    assert harness.observe(out, third).saved == [s for s in reference.patched_saves(L, G, case["saves_per_epoch"], longer) if s > M]
