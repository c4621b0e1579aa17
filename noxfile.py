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
    # every package pinned (ci/constraints-axolotl-<version>.txt), so CI installs what was tested
    constraints = ROOT / "ci" / f"constraints-axolotl-{version}.txt"
    stamp_text = json.dumps({"python": python, "steps": steps, "test": TEST_DEPS, "pins": constraints.read_text()})
    stamp = venv / ".savefix-stamp"
    if not (stamp.exists() and stamp.read_text() == stamp_text):
        session.log(f"building the shared Axolotl {version} environment in {venv} (minutes, once)")
        session.run(_python(python), "-m", "venv", "--clear", str(venv), external=True)
        pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet"]
        session.run(*pip, "--upgrade", "pip", external=True)
        pinned = ["-c", str(constraints)]
        for step in steps:
            session.run(*pip, *pinned, *step, external=True)
        session.run(*pip, *pinned, *TEST_DEPS, external=True)
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
    """Unit, patching, Trainer, and the CPU e2e matrix (kill-and-resume runs: `preemption`; FSDP2, DPO: `engines`)."""
    tests_impl(session, "tests", "-m", "not preemption and not engines")


@nox.session(venv_backend="none")
def preemption(session: nox.Session) -> None:
    """Runs killed by SIGKILL at exact points of a save, then resumed by the same command (about 6 minutes)."""
    tests_impl(session, "tests/e2e/test_preemption.py")


@nox.session(venv_backend="none")
def engines(session: nox.Session) -> None:
    """FSDP2 (2 CPU processes, sharded checkpoints) and DPO (Axolotl's RL builder), stock vs patched."""
    tests_impl(session, "tests/e2e/test_engines.py")


@nox.session(python="3.11")
def unit(session: nox.Session) -> None:
    """The pure schedule, checks and patch registry: no Axolotl, seconds."""
    tests_impl(session, "tests/unit", axolotl=None)


@nox.session(venv_backend="none")
def e2e_cpu(session: nox.Session) -> None:
    """Real Axolotl fine-tunes on the CPU, stock vs patched, exact checkpoints; the preemption runs too."""
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
COMPAT_TESTS = [
    "tests/axolotl",
    "tests/e2e/test_matrix.py",
    "tests/e2e/test_evals.py",
    "tests/e2e/test_plan_vs_run.py",
    "tests/e2e/test_cli.py",
    "-k",
    "not stock",
]


def examples_impl(session: nox.Session, axolotl: str) -> None:
    """Axolotl's own example configs (from the sdist of ``axolotl``) stock vs with the plugin line."""
    work = ROOT / ".nox" / "examples-work"
    work.mkdir(parents=True, exist_ok=True)
    tree = _sdist(session, axolotl, work)
    report = ROOT / ".nox" / f"examples-{axolotl}.json"
    env = {"SAVEFIX_EXAMPLES_ROOT": str(tree), "SAVEFIX_EXAMPLES_REPORT": str(report)}
    tests_impl(session, "tests/examples/corpus_test.py", "-s", axolotl=axolotl, env=env)
    session.log(f"per-config results: {report}")


@nox.session(venv_backend="none")
def examples(session: nox.Session) -> None:
    """Every example config in Axolotl 0.19.0's sdist: what stock accepts, the plugin accepts (about a minute)."""
    examples_impl(session, "0.19.0")


@nox.session(venv_backend="none")
@nox.parametrize("axolotl", list(AXOLOTL))
def compat(session: nox.Session, axolotl: str) -> None:
    """The patched e2e subset and the example corpus on each supported Axolotl release.

    0.21.0 needs python3.12: PYENV_VERSION=3.11.7:3.12.1.
    """
    tests_impl(session, *COMPAT_TESTS, axolotl=axolotl)
    examples_impl(session, axolotl)


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


UPSTREAM_DIFF = ROOT / "docs" / "upstream" / "axolotl-per-epoch.diff"
# Axolotl's own tests that touch the changed code (config validation, normalize_config, the
# builder, the callbacks), plus the new unit tests. The new e2e test needs the Hugging Face Hub.
UPSTREAM_TESTS = [
    "tests/utils/schemas/validation",
    "tests/core/test_builders.py",
    "tests/test_normalize_config.py",
    "tests/utils/callbacks",
]
NEW_TESTS = "tests/utils/callbacks/test_per_epoch.py"


def _sdist(session: nox.Session, version: str, work: Path) -> Path:
    """Axolotl's sdist from PyPI, unpacked fresh into ``work``: its src/, tests/ and pyproject.toml."""
    archive = work / f"axolotl-{version}.tar.gz"
    if not archive.exists():
        session.run(
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            "--ignore-requires-python", f"axolotl=={version}", "-d", str(work), external=True,
        )  # fmt: skip
    tree = work / f"axolotl-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.unpack_archive(archive, work)
    return tree


def _junit_outcomes(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    outcomes = {}
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[name] = bad[0] if bad else "passed"
    return outcomes


def _axolotl_tests(session: nox.Session, python: str, tree: Path, report: Path, *paths: str) -> dict[str, str]:
    hub_offline = str(ROOT / "tests" / "upstream")
    with session.chdir(tree):
        session.run(
        python, "-m", "pytest", "-p", "hub_offline", "-p", "no:cacheprovider", "-q", "--tb=short",
        f"--junitxml={report}", *paths,
        env={**UNBUFFERED, "PYTHONPATH": hub_offline}, external=True, success_codes=[0, 1], silent=True,
        )  # fmt: skip
    return _junit_outcomes(report)


@nox.session(python="3.11")
def upstream(session: nox.Session) -> None:
    """The upstream pull request, verified: docs/upstream/axolotl-per-epoch.diff on Axolotl's own source.

    Applies the diff to the 0.19.0 sdist and (dry run) to 0.21.0; lints the changed files with
    Axolotl's ruff settings and pinned version; runs Axolotl's tests for the changed code, stock
    and patched (offline: tests that need the Hub fail both ways, so the gate is "nothing that
    passed on stock fails patched, and every new test passes"); installs the patched Axolotl in a
    fresh venv and runs our e2e cases there without axolotl_savefix.
    """
    work = ROOT / ".nox" / "upstream-work"
    work.mkdir(parents=True, exist_ok=True)
    diff = str(UPSTREAM_DIFF)
    newest = _sdist(session, "0.21.0", work)
    with session.chdir(newest):
        # no fuzz: every context line must match (line offsets are fine)
        session.run("patch", "-p1", "-F0", "--batch", "--dry-run", "-i", diff, external=True)
    session.log("diff applies cleanly to axolotl 0.21.0 (dry run)")
    stock = _sdist(session, "0.19.0", work)
    patched = work / "axolotl-0.19.0-patched"
    shutil.rmtree(patched, ignore_errors=True)
    shutil.copytree(stock, patched)
    with session.chdir(patched):
        session.run("patch", "-p1", "-F0", "--batch", "-i", diff, external=True)
    session.log("diff applied to axolotl 0.19.0")

    # lint with Axolotl's own settings (its pyproject.toml) and its pinned ruff
    pre_commit = (patched / ".pre-commit-config.yaml").read_text()
    ruff_rev = pre_commit.split("astral-sh/ruff-pre-commit", 1)[1].split("rev:", 1)[1].split()[0].lstrip("v")
    session.install(f"ruff=={ruff_rev}")
    changed = [line[6:] for line in UPSTREAM_DIFF.read_text().splitlines() if line.startswith("+++ b/")]
    with session.chdir(patched):
        session.run("ruff", "check", *changed)
        session.run("ruff", "format", "--check", *changed)

    # a fresh venv: the patched Axolotl on top of the shared 0.19.0 environment's dependencies
    shared = axolotl_env(session, "0.19.0")
    venv = ROOT / ".nox" / "upstream-axolotl-0.19.0"
    session.run(_python("3.11"), "-m", "venv", "--clear", str(venv), external=True)
    python = str(venv / "bin" / "python")
    site = session.run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True, external=True)
    shared_site = session.run(
        str(shared), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True, external=True
    )
    # the shared packages come after this venv's own, so the patched Axolotl wins; .pth files
    # there (our editable install) are not processed, so axolotl_savefix is not importable
    (Path(site.strip()) / "shared-axolotl-deps.pth").write_text(shared_site.strip() + "\n")
    session.run(python, "-m", "pip", "install", "--quiet", "--no-deps", str(patched), external=True)

    stock_results = _axolotl_tests(session, str(shared), stock, work / "stock.xml", *UPSTREAM_TESTS)
    patched_results = _axolotl_tests(session, python, patched, work / "patched.xml", *UPSTREAM_TESTS)
    new = {k: v for k, v in patched_results.items() if "test_per_epoch" in k}
    regressions = sorted(k for k, v in patched_results.items() if v != "passed" and stock_results.get(k) == "passed")
    failing_new = sorted(k for k, v in new.items() if v != "passed")
    passed = sum(v == "passed" for v in patched_results.values())
    session.log(
        f"Axolotl tests: {len(patched_results)} run patched, {passed} passed "
        f"(stock: {len(stock_results)} run, {sum(v == 'passed' for v in stock_results.values())} passed); "
        f"new: {len(new)} run, {len(new) - len(failing_new)} passed; regressions: {len(regressions)}"
    )
    if regressions or failing_new or not new:
        session.error(f"regressions: {regressions}; failing new tests: {failing_new}")

    # our e2e cases on upstream code alone
    session.run(
        python, "-m", "pytest", "-p", "no:anyio", "-p", "no:cacheprovider", str(ROOT / "tests" / "e2e" / "upstream_cases.py"),
        *session.posargs, env=venv_env(python), external=True,
    )  # fmt: skip
    # and with the fix upstream, our package steps aside
    session.run(
        python, "-c", "import axolotl_savefix; assert axolotl_savefix.apply() is False; print('axolotl_savefix steps aside')",
        env={"PYTHONPATH": str(ROOT / "patches")}, external=True,
    )  # fmt: skip


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "patches", "tests", "noxfile.py")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with nox")
