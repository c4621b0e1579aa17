"""`nox -s build`: the wheel and sdist, checked in fresh venvs, and the README's install line as typed.

A plain module (standard library + nox), imported by noxfile.py from ci/.
"""

from __future__ import annotations

import environments
import nox
from environments import ROOT


def run(session: nox.Session, axolotl: str, release: tuple[str, list[str]]) -> None:
    """`nox -s build`'s body: the wheel and sdist into dist/, the wheel alone in a fresh venv, then :func:`install_check`.

    ``axolotl``: the release install_check installs beside this package; ``release``: its (Python, torch pins).
    """
    import glob
    import shutil

    python_version, torch = release
    uv = environments.uv(session)
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run(uv, "build", "--out-dir", str(dist), str(ROOT), external=True)
    wheels = glob.glob(str(dist / "axolotl_savefix-*.whl"))
    sdists = glob.glob(str(dist / "axolotl_savefix-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        session.error(f"dist/ holds {len(wheels)} wheels and {len(sdists)} sdists: expected one of each")
    venv = ROOT / ".nox" / "build-check"
    session.run(uv, "venv", "--quiet", "--clear", "--python", environments.interpreter("3.11"), str(venv), external=True)
    python = str(venv / "bin" / "python")
    # the wheel with no deps, then its one requirement (PyYAML) from what the machine has
    session.run(uv, "pip", "install", "--quiet", "--python", python, "--no-deps", wheels[0], external=True)
    session.run(uv, "pip", "install", "--quiet", "--python", python, *environments.find_links(), "pyyaml", external=True)
    command = str(venv / "bin" / "axolotl-savefix")
    session.run(command, "--version", external=True)
    config = venv / "tiny.yml"
    config.write_text(f"base_model: tiny\nmicro_batch_size: 1\nnum_epochs: 2\nsaves_per_epoch: 2\noutput_dir: {venv / 'out'}\n")
    session.run(command, "plan", str(config), "--steps-per-epoch", "10", external=True)  # exit 0: saves 5 10 15 20, all kept
    session.log(f"built and checked: {wheels[0]}, {sdists[0]}")
    install_check(session, uv, axolotl, python_version, torch)


# what a plan or --version in install_check gets: no telemetry, no Hub (the demo's model and data are local)
OFFLINE_RUN = {"AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}


def install_check(session: nox.Session, uv: str, axolotl: str, python_version: str, torch: list[str]) -> None:
    """The README's install line as typed, beside a plain Axolotl, in a fresh venv (.nox/install-check).

    1. ``uv venv --seed`` (Python 3.11, with pip), then ``axolotl==0.19.0`` and its torch as a user
       installs them, nothing of ours: uv, this machine's CPU torch wheels (find-links) and
       ci/constraints-axolotl-0.19.0.txt, so the packages are the tested ones and come from uv's cache.
    2. ``pip install .`` at the repository's root, the README's line, with the venv's pip; it must add
       ``axolotl-savefix`` and change nothing Axolotl brought (``uv pip freeze`` before and after).
    3. ``axolotl-savefix --version`` names this package's version and Axolotl 0.19.0;
       ``axolotl-savefix plan`` on the demo's patched config (tests/e2e/demo.py's) exits 0.
    Logs its seconds, step by step. Fails the session naming the step otherwise.
    """
    import re
    import time

    started = time.monotonic()
    steps: dict[str, float] = {}

    def lap(step: str) -> None:  # the seconds since the previous lap, as the step's
        steps[step] = time.monotonic() - started - sum(steps.values())

    venv = ROOT / ".nox" / "install-check"
    bin_dir = venv / "bin"
    python = str(bin_dir / "python")
    interpreter = environments.interpreter(python_version)
    session.run(uv, "venv", "--quiet", "--clear", "--seed", "--python", interpreter, str(venv), external=True)
    constraints = ROOT / "ci" / f"constraints-axolotl-{axolotl}.txt"
    session.run(
        uv, "pip", "install", "--quiet", "--python", python, *environments.find_links(),
        "-c", str(constraints), *torch, f"axolotl=={axolotl}", external=True,
    )  # fmt: skip
    lap("venv and axolotl")
    freeze = [uv, "pip", "freeze", "--python", python]
    before = set(session.run(*freeze, silent=True, external=True).splitlines())
    # README.md, "Enable the fix", as typed in the activated venv; nox looks a bare "pip" up on its own PATH, so the full path
    session.run(str(bin_dir / "pip"), "install", "--quiet", ".", env={"VIRTUAL_ENV": str(venv)}, external=True)
    lap("pip install .")
    after = set(session.run(*freeze, silent=True, external=True).splitlines())
    added, removed = sorted(after - before), sorted(before - after)
    if removed or [line.split("==")[0].split(" @ ")[0] for line in added] != ["axolotl-savefix"]:
        session.error(f"install check: `pip install .` should add axolotl-savefix only; it added {added}, removed {removed}")
    ours = re.search(r'__version__ = "([^"]+)"', (ROOT / "patches" / "axolotl_savefix" / "__init__.py").read_text())[1]
    command = str(bin_dir / "axolotl-savefix")
    shown = session.run(command, "--version", silent=True, env=OFFLINE_RUN, external=True).strip()
    wanted = f"axolotl-savefix {ours} (axolotl {axolotl})"
    if shown != wanted:
        session.error(f"install check: `axolotl-savefix --version` printed {shown!r}; expected {wanted!r}")
    session.log(f"install check: {shown}")
    lap("--version")
    write = (
        "import sys; from pathlib import Path; sys.path[:0] = sys.argv[2:]; import cases, harness; "
        "print(harness.write_config(cases.case('reported'), Path(sys.argv[1]) / 'patched', plugin=True))"
    )  # the demo's patched config (tests/e2e/demo.py), its tiny model and data built in the venv's folder
    tests = ROOT / "tests"
    written = session.run(
        python, "-c", write, str(venv / "demo"), str(tests / "e2e"), str(tests), silent=True, env=OFFLINE_RUN, external=True
    )
    config = written.strip().splitlines()[-1]
    lap("the demo config")
    session.run(command, "plan", config, env=OFFLINE_RUN, external=True)  # exit 0: the patched plan keeps all 8
    lap("plan")
    each = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in steps.items())
    session.log(f"install check: README's `pip install .` beside axolotl {axolotl}: {sum(steps.values()):.0f} s ({each})")
