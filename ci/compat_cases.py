"""The named cases of `nox -s compat`: one real run per patch promise, each the pytest node id(s) that prove it.

Standard library only, pure data: ci/compat_sweep.py runs and records them, ci/compat_doc.py names
the columns of docs/compatibility.md's second table after them. ``patched``: the test that proves
the promise with the plugin; ``stock`` (where one exists): the test beside it that runs stock
Axolotl and asserts the defect the patch removes (it passes while stock still shows the defect).
"""

from __future__ import annotations

E2E = "tests/e2e"

CASES: dict[str, dict[str, str]] = {
    "reported case: checkpoint count": {
        "patched": f"{E2E}/test_matrix.py::test_exact_checkpoints[reported-patched]",
        "stock": f"{E2E}/test_matrix.py::test_exact_checkpoints[reported-stock]",
    },
    "SIGKILL mid-save, auto-resume: exact schedule": {
        "patched": f"{E2E}/test_preemption.py::"
        "test_killed_mid_save_the_same_command_resumes_and_ends_with_the_exact_schedule[optimizer]",
        "stock": f"{E2E}/test_preemption.py::test_stock_cannot_resume_after_a_kill_mid_save[optimizer]",
    },
    "SIGTERM between saves: 0 steps lost, exit 143": {
        "patched": f"{E2E}/test_preemption_notice.py::"
        "test_sigterm_at_a_random_step_resumes_with_the_losses_of_an_uninterrupted_run",
        "stock": f"{E2E}/test_preemption_notice.py::test_stock_dies_of_sigterm_and_retrains_the_steps_since_its_last_checkpoint",
    },
    "full small disk: warned, no crash loop": {
        "patched": f"{E2E}/test_disk.py::test_keep_all_on_a_small_disk_warns_stops_clearly_and_does_not_loop",
    },
    "reused output_dir of a finished run: refused": {
        "patched": f"{E2E}/test_resume_match.py::test_auto_resume_past_this_runs_end_stops_and_a_longer_run_continues",
        "stock": f"{E2E}/test_resume_match.py::test_stock_auto_resume_past_the_end_trains_nothing_and_says_nothing",
    },
    "resume in epoch 2: per-step loss of an uninterrupted run": {
        "patched": f"{E2E}/test_resume_fidelity.py::test_resume_in_epoch_2_trains_on_the_uninterrupted_runs_samples[45]",
        "stock": f"{E2E}/test_resume_fidelity.py::test_stock_resume_in_epoch_2_measured",
    },
    "auto-resume: logged token counters of an uninterrupted run": {
        "patched": f"{E2E}/test_resume_fidelity.py::test_resumed_token_counters_are_the_uninterrupted_runs[45]",
        "stock": f"{E2E}/test_resume_fidelity.py::test_stock_auto_resume_token_counters_measured",
    },
    "2-process DDP resume: both ranks agree": {
        "patched": f"{E2E}/test_preemption_notice.py::test_sigterm_to_one_rank_stops_every_rank_at_the_same_step[ddp]",
    },
}


def node_ids() -> list[str]:
    """Every case's pytest node ids, in the table's order (patched before stock), each once."""
    ids = [test for case in CASES.values() for test in (case["patched"], case.get("stock")) if test]
    return list(dict.fromkeys(ids))


def junit_key(node_id: str) -> str:
    """A module-level test's node id as pytest's junit report names it: ``tests.e2e.mod::name[param]``.

    Raises ValueError for an id without ``::`` (a file or folder is no single case).
    """
    path, sep, name = node_id.partition("::")
    if not sep or not path.endswith(".py"):
        raise ValueError(f"compat case {node_id!r} is not a test node id: write it as path/to/test_file.py::test_name")
    return f"{path[: -len('.py')].replace('/', '.')}::{name}"


def case_outcomes(outcomes: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each case of ``CASES`` as ``{name: {"patched": outcome, "stock": outcome}}``.

    ``outcomes``: a junit report as ci/junit_report.py's ``junit_outcomes`` reads it (``passed``, ``failed``,
    ``skipped: <reason>``; ``{}`` for no report). A test not in it is ``not run`` (deselected, or the
    session stopped first). ``stock`` only for the cases that have a stock test.
    """

    def outcome(test: str) -> str:
        return outcomes.get(junit_key(test), "not run")

    return {name: {variant: outcome(test) for variant, test in tests.items()} for name, tests in CASES.items()}
