"""Chaos, small: a few SIGKILLs at random instants of a real run, the same command again until it completes.

The harness is tests/e2e/chaos.py (large N: ``nox -s chaos``). Here: a fixed default seed and
a few kills, so a CI run stays short; ``SAVEFIX_CHAOS_SEED``, ``SAVEFIX_CHAOS_KILLS`` and
``SAVEFIX_CHAOS_ENGINES`` (comma separated: single, ddp, fsdp) replay or widen it. The seed
is printed, and named in the failure.

Beside it, stock: the same kill inside a save, with the same command run again, is recorded
by tests/e2e/test_preemption.py (``test_stock_cannot_resume_after_a_kill_mid_save``).
"""

import os

import chaos
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.preemption]

SEED = int(os.environ.get("SAVEFIX_CHAOS_SEED") or 19)
KILLS = int(os.environ.get("SAVEFIX_CHAOS_KILLS") or 2)
ENGINES = (os.environ.get("SAVEFIX_CHAOS_ENGINES") or "single").split(",")


@pytest.mark.parametrize("engine", ENGINES)
def test_chaos_kills_at_random_instants_and_the_same_command_completes_exactly(engine, e2e_root):
    print(f"chaos seed {SEED}, {KILLS} kills ({engine}); replay: SAVEFIX_CHAOS_SEED={SEED} SAVEFIX_CHAOS_KILLS={KILLS}")
    try:
        summary = chaos.chaos(SEED, KILLS, [engine], e2e_root / f"chaos-{engine}", timeout=900.0)
    except chaos.ChaosFailure as exc:
        pytest.fail(f"seed {SEED} ({engine}, {KILLS} kills): {exc}")
    print(summary)
    assert summary["engines"][engine]["kills"] >= KILLS
