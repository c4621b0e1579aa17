"""`nox -s layouts`: the conformance corpus of checkpoint layouts (tests/e2e/test_layouts.py), both of its parts.

A plain module (standard library + nox), imported by noxfile.py from ci/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nox
import nox.command
from environments import ROOT


def run(session: nox.Session, tests_impl: Callable[..., None], deepspeed_venv: Callable[..., tuple[str, dict]], old: Path) -> None:
    """Axolotl 0.19.0's layouts (``old``: the 0.13.2 venv's python, for ``save_safetensors: false``), then DeepSpeed's
    in the ``deepspeed`` session's environment; both run, and the session fails at the end naming the part that failed.
    The table of issue 37's closing note: .nox/layouts.md.
    """
    report = ROOT / ".nox" / "layouts.md"
    report.unlink(missing_ok=True)
    env = {"SAVEFIX_LAYOUTS_REPORT": str(report), "SAVEFIX_LAYOUTS_PYTHON_0_13_2": str(old)}
    failed = []
    try:  # both parts run; the session fails at the end naming the part that failed
        tests_impl(session, "tests/e2e/test_layouts.py", "-m", "layouts and not deepspeed", env=env)
    except nox.command.CommandFailed:
        failed.append("Axolotl 0.19.0/0.13.2 layouts")
    python, run_env = deepspeed_venv(session, {"SAVEFIX_LAYOUTS_REPORT": str(report)})
    test = ["tests/e2e/test_layouts.py", "-m", "layouts and deepspeed"]
    try:
        session.run(python, "-m", "pytest", "-p", "no:anyio", *test, *session.posargs, env=run_env, external=True)
    except nox.command.CommandFailed:
        failed.append("DeepSpeed layouts")
    session.log(f"the table (issue 37): {report}\n{report.read_text() if report.exists() else ''}")
    if failed:
        session.error(f"failed: {', '.join(failed)}")
