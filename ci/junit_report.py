"""A pytest junit report read once: each test's outcome, the skip's reason kept. Standard library only.

ci/environments.py re-exports :func:`junit_outcomes` (the sessions import it from there); ci/compat_cases.py
maps its result onto the named compat cases.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def junit_outcomes(path: Path) -> dict[str, str]:
    """A pytest junit report as ``{"<classname>::<name>": outcome}``.

    An outcome is ``passed``, ``failed`` (a failure or an error) or ``skipped: <pytest's reason>``
    (whitespace folded, pytest's "Skipped: " prefix dropped). Raises what ``ElementTree`` raises for a
    missing or broken file.
    """
    outcomes = {}
    for test in ET.parse(path).iter("testcase"):
        outcome = "passed"
        for child in test:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                break
            if child.tag == "skipped":
                reason = " ".join((child.get("message") or "no reason given").split())
                outcome = f"skipped: {reason.removeprefix('Skipped: ')}"
                break
        outcomes[f"{test.get('classname')}::{test.get('name')}"] = outcome
    return outcomes
