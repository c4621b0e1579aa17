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
    """2-process DDP, FSDP2 (2 CPU processes, sharded checkpoints) and DPO (Axolotl's RL builder), stock vs patched."""
    tests_impl(session, "tests/e2e/test_engines.py", "tests/e2e/test_ddp.py")


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
    env = {"SAVEFIX_DEVICE": "cuda-bf16"}
    # Axolotl's deepspeed_configs/ come with its sdist: downloaded here, or carried to a machine offline
    configs = ROOT / ".nox" / "examples-work" / "axolotl-0.19.0" / "deepspeed_configs"
    if not configs.is_dir():
        try:
            _sdist(session, "0.19.0", ROOT / ".nox" / "examples-work")
        except Exception as exc:  # noqa: BLE001 - offline: the DeepSpeed cases then skip, saying why
            session.warn(f"no Axolotl sdist for deepspeed_configs/: {exc}")
    if configs.is_dir():
        env["SAVEFIX_DEEPSPEED_CONFIGS"] = str(configs)
    tests_impl(session, "tests/e2e", "tests/e2e/gpu_engines.py", env=env)


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
    tests_impl(session, "tests/examples/corpus_check.py", "-s", axolotl=axolotl, env=env)
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


SERIES = ROOT / "docs" / "upstream" / "series"
# Axolotl's own tests that touch the changed code (config validation, normalize_config, the
# builder, the callbacks, the resume helper), plus the new tests the series adds.
UPSTREAM_TESTS = [
    "tests/utils/schemas/validation",
    "tests/core/test_builders.py",
    "tests/test_normalize_config.py",
    "tests/utils/callbacks",
    "tests/utils/test_train.py",
]
# the Axolotl-style e2e test of the series, run on the local fixture (it downloads SmolLM2 otherwise)
SERIES_E2E = "tests/e2e/test_per_epoch_checkpoints.py"
# which of our e2e cases (tests/e2e/upstream_cases.py) hold after how many patches of the series
UPSTREAM_CASES = {
    1: "our_package or exact_checkpoints",
    2: "our_package or exact_checkpoints or exact_evals",
    3: "our_package or exact_checkpoints or exact_evals",
    4: "our_package or exact_checkpoints or exact_evals or killed",
}
# hooks of Axolotl's .pre-commit-config.yaml that cannot run here, and why
HOOKS_NOT_RUN = {"no-commit-to-branch": "checks the git branch of a commit; the series is not committed to a branch here"}


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


def _series() -> list[Path]:
    return sorted(SERIES.glob("*.diff"))


def _changed_files(patch: Path) -> list[str]:
    return [line[6:] for line in patch.read_text().splitlines() if line.startswith("+++ b/")]


def _diff_lines(patch: Path) -> tuple[int, int]:
    lines = patch.read_text().splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added, removed


def _precommit_hooks(session: nox.Session, tree: Path, changed: list[str], python: str) -> list[str]:
    """Axolotl's own pre-commit hooks, at the revisions its .pre-commit-config.yaml pins, on ``changed``.

    Run as the tools themselves (pre-commit would clone each hook's repository from GitHub,
    which this machine cannot reach): pre-commit-hooks, ruff, ruff-format, mypy with the
    hook's additional dependencies, bandit with Axolotl's .bandit, and the local
    check-cli-config-options with the patched Axolotl.
    """
    import yaml

    config = yaml.safe_load((tree / ".pre-commit-config.yaml").read_text())
    revs = {repo["repo"].rsplit("/", 1)[-1]: repo.get("rev", "").lstrip("v") for repo in config["repos"]}
    hook_ids = [hook["id"] for repo in config["repos"] for hook in repo["hooks"]]
    mypy_deps = next(h.get("additional_dependencies", []) for r in config["repos"] for h in r["hooks"] if h["id"] == "mypy")
    session.install(
        f"pre-commit-hooks=={revs['pre-commit-hooks']}",
        f"ruff=={revs['ruff-pre-commit']}",
        f"mypy=={revs['mirrors-mypy']}",
        *mypy_deps,
        f"bandit=={revs['bandit']}",
        "pyyaml",
    )
    files = [f for f in changed if (tree / f).exists()]
    py = [f for f in files if f.endswith(".py")]
    ran = []
    with session.chdir(tree):
        yamls = [f for f in files if f.endswith((".yml", ".yaml"))]
        if yamls:
            session.run("check-yaml", *yamls)
        ran.append("check-yaml")
        # the fixers exit 1 when they had to change a file: a clean patch needs no fixing
        session.run("end-of-file-fixer", *files)
        session.run("trailing-whitespace-fixer", *files)
        ran += ["end-of-file-fixer", "trailing-whitespace"]
        session.run("ruff", "check", *py)
        session.run("ruff", "format", "--check", *py)
        ran += ["ruff", "ruff-format"]
        src = [f for f in py if f.startswith("src/")]
        session.run("mypy", "--ignore-missing-imports", *src)
        ran.append("mypy")
        session.run("bandit", "--ini", ".bandit", "-q", *py)
        ran.append("bandit")
        if any(f.startswith("src/axolotl/utils/schemas/") or f == "src/axolotl/cli/config_options.py" for f in files):
            session.run(
                python, "-c", "from axolotl.cli.generate_config_options import write_options; write_options(check=True)",
                external=True, silent=True,
            )  # fmt: skip
        ran.append("check-cli-config-options")
    missing = [h for h in hook_ids if h not in ran and h not in HOOKS_NOT_RUN]
    if missing:
        session.error(f"hooks in Axolotl's .pre-commit-config.yaml not run: {missing}")
    return ran


@nox.session(python="3.11")
def upstream(session: nox.Session) -> None:
    """The upstream series, verified patch by patch on Axolotl's own source (docs/upstream/series/).

    1. Each patch applies with no fuzz on top of the previous ones, to the newest release's
       sdist (0.21.0) and to 0.19.0.
    2. For each patch, on 0.19.0 with the patches up to it: Axolotl's pre-commit hooks on the
       files it changes; Axolotl's tests for the changed code stock and patched (offline: tests
       that need the Hub fail both ways, so the gate is "nothing that passed on stock fails
       patched, and every test the series adds passes"); the series' own e2e test on the local
       fixture; our e2e cases on the patched Axolotl without axolotl_savefix.
    3. With the whole series installed, our package steps aside.

    Writes .nox/upstream-series.json (per patch: lines, tests added, hooks, tests passed).
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from fixture import OFFLINE

    work = ROOT / ".nox" / "upstream-work"
    work.mkdir(parents=True, exist_ok=True)
    series = _series()
    newest = _sdist(session, "0.21.0", work)
    for patch in series:  # cumulative: each on top of the previous ones
        with session.chdir(newest):
            session.run("patch", "-p1", "-F0", "--batch", "-s", "-i", str(patch), external=True)
    session.log(f"all {len(series)} patches apply in order to axolotl 0.21.0 with no fuzz")

    stock = _sdist(session, "0.19.0", work)
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

    stock_results = _axolotl_tests(session, str(shared), stock, work / "stock.xml", *UPSTREAM_TESTS)
    fixture_root = work / "fixture"
    build = (
        "import sys, fixture; from pathlib import Path; r = Path(sys.argv[1]); "
        "fixture.build(r); fixture.write_dataset(r / 'data.jsonl', 400)"
    )
    session.run(str(shared), "-c", build, str(fixture_root), env={"PYTHONPATH": str(ROOT / "tests")}, external=True)
    model, data = fixture_root / "model", fixture_root / "data.jsonl"
    tree = work / "axolotl-0.19.0-series"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(stock, tree)
    report = []
    for n, patch in enumerate(series, 1):
        with session.chdir(tree):
            session.run("patch", "-p1", "-F0", "--batch", "-s", "-i", str(patch), external=True)
        session.run(python, "-m", "pip", "install", "--quiet", "--no-deps", str(tree), external=True)
        changed = _changed_files(patch)
        hooks = _precommit_hooks(session, tree, changed, python)
        results = _axolotl_tests(session, python, tree, work / f"patched-{n}.xml", *UPSTREAM_TESTS)
        regressions = sorted(k for k, v in results.items() if v != "passed" and stock_results.get(k) == "passed")
        added_files = [f for f in changed if f.startswith("tests/")]
        new = {
            k: v
            for k, v in results.items()
            if k not in stock_results or any(k.startswith(f.removesuffix(".py").replace("/", ".")) for f in added_files)
        }
        failing_new = sorted(k for k, v in new.items() if v != "passed")
        if regressions or failing_new:
            session.error(f"patch {patch.name}: regressions {regressions}; failing new tests {failing_new}")
        offline = {**UNBUFFERED, **OFFLINE, "AXOLOTL_PER_EPOCH_MODEL": str(model), "AXOLOTL_PER_EPOCH_DATA": str(data)}
        e2e_file = tree / SERIES_E2E
        e2e_passed = 0
        if e2e_file.exists():
            with session.chdir(tree):
                session.run(
                    python, "-m", "pytest", "-p", "hub_offline", "-p", "no:cacheprovider", "-q", SERIES_E2E,
                    env={**offline, "PYTHONPATH": str(ROOT / "tests" / "upstream")}, external=True,
                )  # fmt: skip
            e2e_passed = e2e_file.read_text().count("\ndef test_")
        session.run(
            python, "-m", "pytest", "-p", "no:anyio", "-p", "no:cacheprovider", "-q",
            str(ROOT / "tests" / "e2e" / "upstream_cases.py"), "-k", UPSTREAM_CASES[n], *session.posargs,
            env=venv_env(python, {"SAVEFIX_UPSTREAM_PATCHES": str(n)}), external=True,
        )  # fmt: skip
        added, removed = _diff_lines(patch)
        entry = {
            "patch": patch.name,
            "lines_added": added,
            "lines_removed": removed,
            "files": changed,
            "hooks_run": hooks,
            "hooks_not_run": HOOKS_NOT_RUN,
            "axolotl_tests_stock": [len(stock_results), sum(v == "passed" for v in stock_results.values())],
            "axolotl_tests_patched": [len(results), sum(v == "passed" for v in results.values())],
            "new_tests": [len(new), len(new) - len(failing_new)],
            "regressions": len(regressions),
            "series_e2e_tests_passed": e2e_passed,
            "our_e2e_selection": UPSTREAM_CASES[n],
        }
        report.append(entry)
        session.log(
            f"{patch.name}: +{added} -{removed}; hooks {', '.join(hooks)}; Axolotl tests stock "
            f"{entry['axolotl_tests_stock'][1]}/{entry['axolotl_tests_stock'][0]}, patched "
            f"{entry['axolotl_tests_patched'][1]}/{entry['axolotl_tests_patched'][0]}; new {entry['new_tests'][1]}/"
            f"{entry['new_tests'][0]}; regressions 0"
        )
    (ROOT / ".nox" / "upstream-series.json").write_text(json.dumps(report, indent=2))
    # with the whole series in, our package steps aside
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
