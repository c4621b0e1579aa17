"""`nox -s upstream`: the upstream series (docs/upstream/series/), verified patch by patch on Axolotl's own source.

A plain module (standard library + nox; PyYAML for Axolotl's pre-commit config, as before),
imported by noxfile.py from ci/. ``run`` is the session's body; the noxfile's ``upstream``
session docstring says what it checks.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nox
from environments import ROOT, UNBUFFERED, interpreter, junit_outcomes, sdist, venv_env

SERIES = ROOT / "docs" / "upstream" / "series"
# Axolotl's own tests that touch the changed code (config validation, normalize_config, the
# builder, the callbacks, the resume helper), plus the new tests the series adds.
UPSTREAM_TESTS = [
    "tests/utils/schemas/validation",
    "tests/core/test_builders.py",
    "tests/test_normalize_config.py",
    "tests/utils/callbacks",
    "tests/utils/test_train.py",
    "tests/core/test_quantized_lora_checkpoint_resume.py",
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
# patches 5 and 6 change nothing these cases see (one process, a roomy disk): they must still hold
UPSTREAM_CASES.update(dict.fromkeys((5, 6), UPSTREAM_CASES[4]))
UPSTREAM_CASES[7] = UPSTREAM_CASES[4] + " or preempted"
UPSTREAM_CASES[8] = UPSTREAM_CASES[7] + " or past_the_end"
# hooks of Axolotl's .pre-commit-config.yaml that cannot run here, and why
HOOKS_NOT_RUN = {"no-commit-to-branch": "checks the git branch of a commit; the series is not committed to a branch here"}


def axolotl_tests(session: nox.Session, python: str, tree: Path, report: Path, *paths: str) -> dict[str, str]:
    hub_offline = str(ROOT / "tests" / "upstream")
    with session.chdir(tree):
        session.run(
        python, "-m", "pytest", "-p", "hub_offline", "-p", "no:cacheprovider", "-q", "--tb=short",
        f"--junitxml={report}", *paths,
        env={**UNBUFFERED, "PYTHONPATH": hub_offline}, external=True, success_codes=[0, 1], silent=True,
        )  # fmt: skip
    return junit_outcomes(report)


def series() -> list[Path]:
    return sorted(SERIES.glob("*.diff"))


def changed_files(patch: Path) -> list[str]:
    return [line[6:] for line in patch.read_text().splitlines() if line.startswith("+++ b/")]


def diff_lines(patch: Path) -> tuple[int, int]:
    lines = patch.read_text().splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added, removed


def precommit_hooks(session: nox.Session, tree: Path, changed: list[str], python: str) -> list[str]:
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


def first_checked(posargs: list[str]) -> tuple[int, int | None, list[str]]:
    """``--from N`` and ``--to M`` at the head of the session's arguments: check patches N to M only.

    Defaults: from 1, to the last patch. The patches before N are still applied (every patch is
    checked on top of the previous ones); the arguments after them go to pytest, as before.
    """
    bounds: dict[str, int] = {}
    while posargs[:1] in (["--from"], ["--to"]) and len(posargs) >= 2 and posargs[1].isdigit():
        bounds[posargs[0]] = int(posargs[1])
        posargs = posargs[2:]
    return bounds.get("--from", 1), bounds.get("--to"), posargs


def run(session: nox.Session, axolotl_env: Callable[[nox.Session, str], Path]) -> None:
    """The ``upstream`` session: ``axolotl_env(session, version)`` gives the shared Axolotl venv's python.

    ``nox -s upstream -- --from N --to M`` checks patches N to M only (all apply, in order).
    Writes .nox/upstream-series.json (per patch: lines, tests added, hooks, tests passed).
    """
    start, end, pytest_args = first_checked(list(session.posargs))
    end = len(series()) if end is None else end
    if not 1 <= start <= end <= len(series()):
        session.error(f"--from {start} --to {end}: the series has patches 1 to {len(series())}")
    sys.path.insert(0, str(ROOT / "tests"))
    from fixture import OFFLINE

    work = ROOT / ".nox" / "upstream-work"
    work.mkdir(parents=True, exist_ok=True)
    patches = series()
    newest = sdist(session, "0.21.0", work)
    for patch in patches:  # cumulative: each on top of the previous ones
        with session.chdir(newest):
            session.run("patch", "-p1", "-F0", "--batch", "-s", "-i", str(patch), external=True)
    session.log(f"all {len(patches)} patches apply in order to axolotl 0.21.0 with no fuzz")

    stock = sdist(session, "0.19.0", work)
    shared = axolotl_env(session, "0.19.0")
    venv = ROOT / ".nox" / "upstream-axolotl-0.19.0"
    session.run(interpreter("3.11"), "-m", "venv", "--clear", str(venv), external=True)
    python = str(venv / "bin" / "python")
    site = session.run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True, external=True)
    shared_site = session.run(
        str(shared), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True, external=True
    )
    # the shared packages come after this venv's own, so the patched Axolotl wins; .pth files
    # there (our editable install) are not processed, so axolotl_savefix is not importable
    (Path(site.strip()) / "shared-axolotl-deps.pth").write_text(shared_site.strip() + "\n")

    stock_results = axolotl_tests(session, str(shared), stock, work / "stock.xml", *UPSTREAM_TESTS)
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
    for n, patch in enumerate(patches, 1):
        with session.chdir(tree):
            session.run("patch", "-p1", "-F0", "--batch", "-s", "-i", str(patch), external=True)
        if n < start:
            continue
        if n > end:
            break
        started = time.monotonic()
        session.run(python, "-m", "pip", "install", "--quiet", "--no-deps", str(tree), external=True)
        changed = changed_files(patch)
        hooks = precommit_hooks(session, tree, changed, python)
        results = axolotl_tests(session, python, tree, work / f"patched-{n}.xml", *UPSTREAM_TESTS)
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
            str(ROOT / "tests" / "e2e" / "upstream_cases.py"), "-k", UPSTREAM_CASES[n], *pytest_args,
            env=venv_env(python, {"SAVEFIX_UPSTREAM_PATCHES": str(n)}), external=True,
        )  # fmt: skip
        added, removed = diff_lines(patch)
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
            "seconds": round(time.monotonic() - started),
        }
        report.append(entry)
        session.log(
            f"{patch.name}: +{added} -{removed}; hooks {', '.join(hooks)}; Axolotl tests stock "
            f"{entry['axolotl_tests_stock'][1]}/{entry['axolotl_tests_stock'][0]}, patched "
            f"{entry['axolotl_tests_patched'][1]}/{entry['axolotl_tests_patched'][0]}; new {entry['new_tests'][1]}/"
            f"{entry['new_tests'][0]}; regressions 0; {entry['seconds']} s"
        )
    name = "upstream-series.json" if (start, end) == (1, len(patches)) else f"upstream-series-{start}-to-{end}.json"
    (ROOT / ".nox" / name).write_text(json.dumps(report, indent=2))
    if end < len(patches):
        return
    # with the whole series in, our package steps aside
    session.run(
        python, "-c", "import axolotl_savefix; assert axolotl_savefix.apply() is False; print('axolotl_savefix steps aside')",
        env={"PYTHONPATH": str(ROOT / "patches")}, external=True,
    )  # fmt: skip
