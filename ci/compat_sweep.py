"""`nox -s compat`'s record: one proven release's row of docs/compat-sweep.json, and the table made from it.

A plain module (standard library + nox), imported by noxfile.py from ci/. The session runs
the tests and the example corpus; ``record`` reads what they left and writes the sweep.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nox
from compat_cases import case_outcomes
from environments import ROOT, TARGETS, junit_outcomes

SWEEP = ROOT / "docs" / "compat-sweep.json"  # what `compat` found, per release; docs/compatibility.md is made from it
VERSIONS = (
    "import json, platform; from importlib.metadata import version as v; "
    "print(json.dumps({'python': platform.python_version(), 'transformers': v('transformers'), "
    "'torch': v('torch'), 'trl': v('trl'), 'accelerate': v('accelerate')}))"
)
CORPUS_KEYS = ("configs", "accepted_by_both", "refused_by_both", "refused_by_patch_only", "accepted_by_patch_only", "plan_crashes")


@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``seconds[phase]`` (seconds)."""
    started = time.monotonic()
    yield
    seconds[phase] = time.monotonic() - started


def fresh_reports(axolotl: str) -> tuple[Path, Path, Path]:
    """.nox/compat/<release>.jsonl (the runs' observations), .xml and -corpus.xml (junit), removed for a fresh run."""
    work = ROOT / ".nox" / "compat"
    work.mkdir(parents=True, exist_ok=True)
    observations, junit, corpus_junit = (work / f"{axolotl}{ext}" for ext in (".jsonl", ".xml", "-corpus.xml"))
    for path in (observations, junit, corpus_junit):
        path.unlink(missing_ok=True)
    return observations, junit, corpus_junit


def record(
    session: nox.Session,
    axolotl: str,
    python: str,
    reports: tuple[Path, Path, Path],
    corpus: tuple[Path, str],
    seconds: dict[str, float],
) -> None:
    """Write ``axolotl``'s entry of docs/compat-sweep.json, remake docs/compatibility.md's table, fail on any failed test.

    ``python``: the release's venv (for its versions); ``reports``: from :func:`fresh_reports`; ``corpus``:
    the example report and the release it came from (``examples_impl``); ``seconds``: env, tests, corpus.
    """
    observations, junit, corpus_junit = reports
    corpus_report, corpus_source = corpus
    outcomes = junit_outcomes(junit) if junit.exists() else {}
    corpus_outcomes = junit_outcomes(corpus_junit) if corpus_junit.exists() else {}
    runs = {}
    if observations.exists():
        for line in observations.read_text().splitlines():
            entry = json.loads(line)
            runs[entry.pop("test")] = entry
    summary = json.loads(corpus_report.read_text())["summary"] if corpus_report.exists() else {}
    failed = sorted(k for k, v in {**outcomes, **corpus_outcomes}.items() if v != "passed")
    versions = json.loads(session.run(python, "-c", VERSIONS, silent=True, external=True).strip().splitlines()[-1])
    entry = {
        "axolotl": axolotl,
        **versions,
        "date": time.strftime("%Y-%m-%d"),
        "result": "pass" if outcomes and corpus_outcomes and not failed else "fail",
        "tests": [sum(v == "passed" for v in outcomes.values()), len(outcomes)],
        "corpus_tests": [sum(v == "passed" for v in corpus_outcomes.values()), len(corpus_outcomes)],
        "failed": failed,
        "runs": runs,
        "cases": case_outcomes(outcomes),
        "corpus_from": corpus_source,
        "corpus": {k: summary[k] if isinstance(summary.get(k), int) else len(summary.get(k) or []) for k in CORPUS_KEYS},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    sweep = json.loads(SWEEP.read_text()) if SWEEP.exists() else {}
    sweep[axolotl] = entry
    SWEEP.write_text(json.dumps(dict(sorted(sweep.items(), key=lambda kv: TARGETS.release_tuple(kv[0]))), indent=1) + "\n")
    session.run(sys.executable, str(ROOT / "ci" / "compat_doc.py"), external=True)
    if failed:
        session.error(f"axolotl {axolotl}: {len(failed)} failed: {', '.join(failed)}")
