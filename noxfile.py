"""Sessions for axolotl-savefix.

The sessions that need Axolotl share one environment per Axolotl version
(``.nox/axolotl-<version>``), built once and reused while its requirements stay
the same: installing Axolotl takes minutes, so CI and ``nox -s tests demo``
install it once. ``unit`` needs no Axolotl and runs in its own small venv.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "pyyaml"]
# Axolotl version -> (Python, pinned install steps). torch first, so pip keeps the CPU build.
AXOLOTL = {
    "0.19.0": ("3.11", [["torch==2.13.0"], ["axolotl==0.19.0"]]),
    "0.21.0": ("3.12", [["torch==2.14.1"], ["axolotl==0.21.0"]]),
}
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}  # the harness itself keeps Axolotl offline (tests/fixture.py)


def _python(version: str) -> str:
    found = shutil.which(f"python{version}")
    if found is None:
        raise RuntimeError(
            f"python{version} is not on PATH. With pyenv: PYENV_VERSION={version}.x or `pyenv global 3.11.7 3.12.1`."
        )
    return found


def axolotl_env(session: nox.Session, version: str = "0.19.0") -> Path:
    """The shared venv for ``axolotl==version`` with this package installed; its python."""
    python, steps = AXOLOTL[version]
    venv = ROOT / ".nox" / f"axolotl-{version}"
    bin_dir = venv / "bin"
    stamp_text = json.dumps({"python": python, "steps": steps, "test": TEST_DEPS})
    stamp = venv / ".savefix-stamp"
    if not (stamp.exists() and stamp.read_text() == stamp_text):
        session.log(f"building the shared Axolotl {version} environment in {venv} (minutes, once)")
        session.run(_python(python), "-m", "venv", "--clear", str(venv), external=True)
        pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet"]
        session.run(*pip, "--upgrade", "pip", external=True)
        for step in steps:
            session.run(*pip, *step, external=True)
        session.run(*pip, *TEST_DEPS, external=True)
        stamp.write_text(stamp_text)
    # this package changes between runs: always reinstall it (fast, no dependencies)
    session.run(
        str(bin_dir / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "-e",
        str(ROOT),
        external=True,
    )
    return bin_dir / "python"


def venv_env(python: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a command in the shared venv: its bin first on PATH (axolotl, accelerate, torchrun)."""
    path = str(Path(python).parent) + os.pathsep + os.environ.get("PATH", "")
    return {**UNBUFFERED, "PATH": path, **(extra or {})}


def run_script(session: nox.Session, script: str, *args: str) -> None:
    """Run ``tests/e2e/<script>`` with the shared Axolotl venv's python."""
    python = str(axolotl_env(session))
    session.run(python, str(ROOT / "tests" / "e2e" / script), *args, env=venv_env(python), external=True)


def tests_impl(
    session: nox.Session,
    *paths: str,
    axolotl: str | None = "0.19.0",
    env: dict[str, str] | None = None,
) -> None:
    """Run pytest on ``paths`` (knobs: which Axolotl; extra environment)."""
    if axolotl is None:
        session.install("-e", ".", *TEST_DEPS)
        python, run_env = "python", {**UNBUFFERED, **(env or {})}
    else:
        python = str(axolotl_env(session, axolotl))
        run_env = venv_env(python, env)
    session.run(
        python,
        "-m",
        "pytest",
        "-p",
        "no:anyio",
        *(paths or ["tests"]),
        *session.posargs,
        env=run_env,
        external=True,
    )


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Everything that runs on this machine: unit, patching, Trainer, and the CPU e2e matrix."""
    tests_impl(session, "tests")


@nox.session(python="3.11")
def unit(session: nox.Session) -> None:
    """The pure schedule, checks and patch registry: no Axolotl, seconds."""
    tests_impl(session, "tests/unit", axolotl=None)


@nox.session(venv_backend="none")
def e2e_cpu(session: nox.Session) -> None:
    """Real Axolotl fine-tunes on the CPU, stock vs patched, exact checkpoints."""
    tests_impl(session, "tests/axolotl", "tests/e2e")


@nox.session(venv_backend="none")
def e2e_gpu(session: nox.Session) -> None:
    """The same matrix on CUDA; skips, saying so, where there is no GPU."""
    python = str(axolotl_env(session))
    probe = "import torch; print(torch.cuda.is_available())"
    if session.run(python, "-c", probe, silent=True, external=True).strip() != "True":
        session.skip("e2e_gpu: no CUDA device visible to torch here; run it on a machine with a GPU")
    tests_impl(session, "tests/e2e", env={"SAVEFIX_DEVICE": "cuda-bf16"})


# The patched subset that must pass on every supported Axolotl release.
COMPAT_TESTS = ["tests/axolotl", "tests/e2e/test_matrix.py", "tests/e2e/test_cli.py", "-k", "not stock"]


@nox.session(venv_backend="none")
@nox.parametrize("axolotl", list(AXOLOTL))
def compat(session: nox.Session, axolotl: str) -> None:
    """The patched e2e subset on each supported Axolotl release (0.21.0 needs python3.12: PYENV_VERSION=3.11.7:3.12.1)."""
    tests_impl(session, *COMPAT_TESTS, axolotl=axolotl)


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """A tiny stock run and a patched run side by side, through `axolotl train`."""
    run_script(session, "demo.py", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Training wall time patched/stock on one case, and the save decision's cost per step."""
    run_script(session, "bench.py", session.posargs[0] if session.posargs else str(ROOT / ".nox" / "bench.json"))


@nox.session(python="3.11")
def bench_plan(session: nox.Session) -> None:
    """`axolotl-savefix plan` on a 1M-step config: median time, JSON to .nox/bench-plan.json (no Axolotl)."""
    session.install("-e", ".")
    out = session.posargs[0] if session.posargs else str(ROOT / ".nox" / "bench-plan.json")
    session.run("python", str(ROOT / "tests" / "bench_plan.py"), out, env=UNBUFFERED)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "patches", "tests", "noxfile.py")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with nox")
