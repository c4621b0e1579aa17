"""The demo's one line per run (tests/e2e/demo.py): what the observed checkpoints mean for the user.

Pure wording, no Axolotl: unit-tested in tests/unit/test_demo_summary.py.
"""

from __future__ import annotations

STOCK_DEFAULT_LIMIT = 4  # stock Axolotl's save_total_limit when unset or 0 (``save_total_limit or 4``)


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps))


def run_summary(
    variant: str,
    saved: list[int],
    kept: list[int],
    epoch_ends: list[int],
    asked: int,
    save_total_limit: int | None,
) -> str:
    """One line: the epoch ends with no checkpoint, and how many of the ``asked`` checkpoints are kept.

    ``saved``: steps that saved a checkpoint (the run's log); ``kept``: the ``checkpoint-N`` left on
    disk; ``epoch_ends``: the optimizer steps that end an epoch; ``asked``: checkpoints the config asks
    for (``saves_per_epoch`` per epoch); ``save_total_limit``: as the config sets it (None: unset).
    """
    missing = [step for step in epoch_ends if step not in saved]
    unkept = [step for step in epoch_ends if step in saved and step not in kept]
    count = f"{len(kept)} of {asked}"
    if len(kept) < len(saved):
        limit = save_total_limit or STOCK_DEFAULT_LIMIT
        default = " by default" if not save_total_limit else ""
        count += f" kept (save_total_limit {limit}{default})"
    elif len(kept) < asked:
        count += f" kept ({len(saved)} saved)"
    if not missing and not unkept:
        return f"{variant}: {count}, each epoch end included"
    parts = []
    if missing:
        plural = "s" if len(missing) > 1 else ""
        parts.append(f"no checkpoint at the epoch end{plural} ({_steps(missing)})")
    if unkept:
        plural = "s" if len(unkept) > 1 else ""
        parts.append(f"the epoch end{plural} ({_steps(unkept)}) saved, then deleted")
    return f"{variant}: {', '.join(parts)}, {count}"
