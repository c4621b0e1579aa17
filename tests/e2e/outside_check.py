"""An Axolotl release outside the proven range (_targets.PROVEN), tried as a user would.

Collected only by ``nox -s outside``, which installs such a release (0.12.2, 0.10.0) and
passes this file by name. What the package promises there: where every patch target is in
place, it runs patched, says once which releases were proven, and the checkpoints are exact;
where a target moved, ``apply()`` raises ``PatchTargetError`` naming the installed release
and the proven range, and patches nothing. Which of the two happened is written to
$SAVEFIX_OUTSIDE_REPORT for the docs.
"""

import json
import logging
import os
from pathlib import Path

import cases
import harness
import reference

import axolotl_savefix
from axolotl_savefix._infra import targets as _targets


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def _report(**outcome) -> None:
    path = os.environ.get("SAVEFIX_OUTSIDE_REPORT")
    if path:
        Path(path).write_text(json.dumps({"axolotl": _targets.axolotl_version(), **outcome}, indent=1))


def test_outside_the_proven_range_runs_patched_with_one_warning_or_fails_naming_the_release(e2e_root):
    version = _targets.axolotl_version()
    assert _targets.outside_proven(version), f"axolotl {version} is a proven release: run `nox -s compat` for it"
    import axolotl.core.builders.base  # noqa: F401 - the builder's targets are checked inside apply(), not later

    records = _Records()
    logger = logging.getLogger("axolotl_savefix")
    logger.addHandler(records)
    try:
        try:
            applied = axolotl_savefix.apply()
        except _targets.PatchTargetError as exc:
            message = str(exc)
            _report(outcome="refused", message=message)
            assert version in message and _targets.SUPPORTED in message
            assert not axolotl_savefix.is_applied()
            return
        assert applied is True
        try:
            case = cases.case("reported")
            observed = harness.run_in_process(harness.write_config(case, e2e_root / "outside-patched", plugin=False))
        finally:
            axolotl_savefix.revert()
    finally:
        logger.removeHandler(records)
    warnings = [m for level, m in records.messages if level == logging.WARNING and "proven" in m]
    L = observed.batches_per_epoch(case["grad_accum"])
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], observed.max_steps)
    _report(outcome="ran patched", warnings=warnings, saved=observed.saved, kept=observed.kept, expected=expected)
    assert len(warnings) == 1 and version in warnings[0] and _targets.SUPPORTED in warnings[0]
    assert observed.saved == expected
    assert observed.kept == expected  # save_total_limit unset: the fix keeps all
