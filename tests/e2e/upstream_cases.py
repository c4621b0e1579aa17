"""The e2e cases on an Axolotl built from the upstream series, with no axolotl_savefix at all.

Run only by ``nox -s upstream``, which passes this file by name (its name keeps it out of
the default collection), in a venv whose Axolotl 0.21.0 has the first ``SAVEFIX_UPSTREAM_PATCHES``
pull requests of docs/upstream/series/ applied; the session selects the tests that many pull
requests cover (``-k``, ci/upstream_check.py's ``UPSTREAM_CASES``). Expected steps always come
from tests/reference.py:

1. one save per epoch saves at the epoch ends; more saves per epoch, and a run set by ``max_steps``, keep the
   share of the run (stock's steps); ``save_total_limit``: unset keeps upstream's 4, ``0`` still becomes 4;
2. ``save_total_limit: 0`` keeps all (the same cases);
3. saves at every epoch fraction (``max_steps`` still keeps stock's steps), exact evals per epoch,
   ``eval_on_start`` at step 0, and the best model with early stopping, and with ``evals_per_epoch`` alone
   (saves unset: Axolotl's one save per epoch, ``best_model_evals_only``);
4. auto-resume sets aside a checkpoint whose save was cut (one run killed mid-save, then resumed);
5. ``dynamic_checkpoint.signals``: SIGTERM saves a checkpoint at the step and exits 143; the rerun resumes there;
6. a resumed run does not evaluate its first step again (``eval_on_start``);
7. a shorter run in a reused output_dir warns that it resumes past its end and trains nothing; a longer one resumes.
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

PATCHES = int(os.environ.get("SAVEFIX_UPSTREAM_PATCHES", "7"))
HERE = harness.Path(__file__).parent
UPSTREAM_LIMIT = 4  # save_total_limit unset: upstream keeps its default


def test_our_package_is_not_there_and_axolotl_has_the_fix():
    import axolotl.utils.callbacks

    assert importlib.util.find_spec("axolotl_savefix") is None
    # pull request 1 changes normalize_config alone (exact_checkpoints[one_per_epoch_packed] shows it)
    assert hasattr(axolotl.utils.callbacks, "SavesPerEpochCallback") == (PATCHES >= 3)


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
    """Transformers' rotation under the series' builder: unset keeps 4; 0 (or less) keeps all
    from pull request 2 on (before it, stock turns 0 into 4)."""
    if limit is None or (limit == 0 and PATCHES < 2):
        limit = UPSTREAM_LIMIT
    return reference.kept(saved, limit if limit > 0 else None)


def _reported():
    case = cases.case("reported")
    L, G = case["samples"] // case["micro_batch"], case["grad_accum"]
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], G, case["num_epochs"])
    return case, L, G, M, reference.patched_saves(L, G, case["saves_per_epoch"], M)


def _launch():
    # one process, no launcher in between: what a scheduler's notice reaches (as test_preemption_notice.py)
    return [str(harness.Path(sys.executable).parent / "python"), "-m", "axolotl.cli.train"]


def _write(config, **changes):
    cfg = yaml.safe_load(config.read_text())
    cfg.update(changes)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.parametrize("name", list(cases.CASES))
def test_exact_checkpoints_from_upstream_code(name, e2e_root):
    case, observed, L = _observe(name, e2e_root)
    G, k, M = case["grad_accum"], case["saves_per_epoch"], observed.max_steps
    # the series leaves a run set by max_steps to the share of the run (stock's schedule); epoch runs move,
    # one save per epoch from pull request 1 on, more saves per epoch from pull request 3 on
    if case["max_steps"] or (PATCHES < 3 and (case["saves_per_epoch"] or 0) > 1):
        saved = reference.stock_saves(L, G, k, case["num_epochs"], M)
    else:
        saved = reference.patched_saves(L, G, k, M)
    assert observed.saved == saved
    assert observed.kept == _kept(saved, case["save_total_limit"])


@pytest.mark.parametrize("name", list(cases.EVAL_CASES))
def test_exact_evals_from_upstream_code(name, e2e_root):
    case, observed, L = _observe(name, e2e_root)
    G, M = case["grad_accum"], observed.max_steps
    saved = reference.patched_saves(L, G, case["saves_per_epoch"], M)
    assert observed.saved == saved
    assert observed.evals == reference.patched_evals(L, G, case["evals_per_epoch"], M)
    if case["early_stopping_patience"] or case["load_best_model_at_end"]:
        best = reference.best_step(saved, {s: observed.eval_loss(s) for s in observed.evals})
        assert best is not None and observed.best_model_checkpoint.endswith(f"checkpoint-{best}")
        assert observed.kept == reference.kept_with_best(saved, case["save_total_limit"], best)
    else:
        assert observed.kept == _kept(saved, case["save_total_limit"])


def test_killed_mid_save_resumes_from_upstream_code(e2e_root):
    """tests/e2e/test_preemption.py's case, on upstream code: killed while writing the optimizer."""
    case, L, G, M, expected = _reported()
    cut = expected[2]
    config = harness.write_config(case, e2e_root / "upstream-preempt", plugin=False)
    _write(config, plugins=["kill_shim.KillShim"], auto_resume_from_checkpoints=True)
    env = {"PYTHONPATH": str(HERE)}
    out = harness.output_dir(config)
    launch = ("--launcher", "python")
    code, first = harness.run_cli_raw(config, *launch, env={**env, "SAVEFIX_KILL_AT": f"{cut}:optimizer"}, log_name="first.log")
    assert code != 0 and "[kill_shim] SIGKILL" in first
    kept_before = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    code, second = harness.run_cli_raw(config, *launch, env=env, log_name="second.log")
    assert code == 0, second[-4000:]
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in expected if s > expected[1]]
    assert observed.kept == _kept(expected, case["save_total_limit"])
    assert (out / f"incomplete-checkpoint-{cut}").is_dir()
    assert second.count(f"checkpoint-{cut} has no readable trainer_state.json") == 1
    assert kept_before == [*expected[:2], cut]  # the older checkpoints were not touched


def test_preempted_by_sigterm_resumes_from_upstream_code(e2e_root):
    """tests/e2e/test_preemption_notice.py's shape, on upstream code: SIGTERM at a step off the schedule."""
    case, L, G, M, expected = _reported()
    step = expected[0] + 2  # off the schedule, scheduled saves ahead
    assert step not in expected
    config = harness.write_config(case, e2e_root / "upstream-sigterm", plugin=False)
    _write(
        config,
        plugins=["signal_shim.SignalShim"],
        auto_resume_from_checkpoints=True,
        dynamic_checkpoint={"enabled": True, "check_interval": 1, "signals": ["SIGTERM"]},
    )
    out = harness.output_dir(config)
    launch = [*_launch(), str(config)]
    env = {"PYTHONPATH": str(HERE)}
    code, first = harness.run_cli_raw(
        config, launcher=launch, env={**env, "SAVEFIX_SIGNAL_AT": f"{step}:SIGTERM"}, log_name="first.log"
    )
    assert code == 128 + 15, first[-4000:]
    assert f"[signal_shim] SIGTERM at the end of step {step}" in first
    # the shim's callback runs after the trainer's own (it is added to the built trainer), so
    # the signal lands after step 10's check: the next check (check_interval 1) saves
    saved_at = step + 1
    assert saved_at not in expected
    assert f"SIGTERM: saved checkpoint-{saved_at}, exiting with status 143" in first
    assert json.loads((out / f"checkpoint-{saved_at}" / "trainer_state.json").read_text())["global_step"] == saved_at
    assert harness.observe(out, first).saved == [s for s in expected if s < saved_at] + [saved_at]
    code, second = harness.run_cli_raw(config, launcher=launch, env=env, log_name="second.log")
    assert code == 0, second[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{saved_at}'}" in second
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in expected if s > saved_at]
    # an ordinary checkpoint to rotation
    assert observed.kept == _kept(sorted([*expected, saved_at]), case["save_total_limit"])


def test_resumed_eval_is_not_repeated_on_upstream_code(e2e_root):
    """#3305 through eval_on_start: run 2 (3 epochs) auto-resumes from run 1's evaluated checkpoint-60."""
    case = cases.case("evals_reported")
    G = case["grad_accum"]
    config = harness.write_config(case, e2e_root / "upstream-resumed-eval", plugin=False)
    _write(config, auto_resume_from_checkpoints=True)
    out = harness.output_dir(config)
    launch = [*_launch(), str(config)]
    code, first = harness.run_cli_raw(config, launcher=launch, log_name="first.log")
    assert code == 0, first[-4000:]
    run1 = harness.observe(out, first)
    L, M = run1.batches_per_epoch(G), run1.max_steps
    assert run1.evals == reference.patched_evals(L, G, case["evals_per_epoch"], M)
    _write(config, num_epochs=3)
    code, second = harness.run_cli_raw(config, launcher=launch, log_name="second.log")
    assert code == 0, second[-4000:]
    run2 = harness.observe(out, second)
    assert run2.evals == reference.patched_evals(L, G, case["evals_per_epoch"], run2.max_steps)
    assert run2.evals.count(M) == 1


def test_a_shorter_run_in_a_reused_output_dir_warns_past_the_end_on_upstream_code(e2e_root):
    """Run 2 (1 epoch) auto-resumes from run 1's (2 epochs) checkpoint-60: a warning, nothing trained; run 3 (3 epochs) resumes."""
    case, L, G, M, saved = _reported()
    config = harness.write_config(case, e2e_root / "upstream-reused", plugin=False)
    _write(config, auto_resume_from_checkpoints=True)
    out = harness.output_dir(config)
    launch = [*_launch(), str(config)]
    code, first = harness.run_cli_raw(config, launcher=launch, log_name="first.log")
    assert code == 0, first[-4000:]
    assert harness.observe(out, first).saved == saved
    shorter = reference.axolotl_max_steps(case["samples"], case["micro_batch"], G, 1)
    _write(config, num_epochs=1)
    code, second = harness.run_cli_raw(config, launcher=launch, log_name="second.log")
    assert code == 0, second[-4000:]
    assert f"Resuming at step {M}, past the end of this run ({shorter} steps)" in second
    assert harness.observe(out, second).saved == []
    longer = reference.axolotl_max_steps(case["samples"], case["micro_batch"], G, 3)
    _write(config, num_epochs=3)
    code, third = harness.run_cli_raw(config, launcher=launch, log_name="third.log")
    assert code == 0, third[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{M}'}" in third
    assert "past the end" not in third
    assert harness.observe(out, third).saved == [s for s in reference.patched_saves(L, G, case["saves_per_epoch"], longer) if s > M]
