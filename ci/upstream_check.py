"""`nox -s upstream`: the upstream series (docs/upstream/series/), verified pull request by pull request on Axolotl's own source.

A plain module (standard library + nox; PyYAML for Axolotl's pre-commit config, as before),
imported by noxfile.py from ci/. ``run`` is the session's body; the noxfile's ``upstream``
session docstring says what it checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nox
from environments import ROOT, UNBUFFERED, interpreter, junit_outcomes, sdist, venv_env

SERIES = ROOT / "docs" / "upstream" / "series"
# the release the series is cut against (git format-patch on its sdist): the newest, Python 3.12
BASE = "0.21.0"
# Axolotl's own tests that touch the changed code (config validation, normalize_config, the
# builder and its callback wiring, the callbacks, the resume helper); each pull request's own
# test files are added to them from that pull request on
UPSTREAM_TESTS = [
    "tests/utils/schemas/validation",
    "tests/core/test_builders.py",
    "tests/core/test_gc_steps_wiring.py",
    "tests/test_normalize_config.py",
    "tests/utils/callbacks",
    "tests/utils/test_train.py",
    "tests/core/test_quantized_lora_checkpoint_resume.py",
]
# which of our e2e cases (tests/e2e/upstream_cases.py) hold once pull requests 1 to N are in
CASES_ADDED = {
    # every exact_checkpoints case holds from pull request 1 on: one save per epoch at the epoch ends, more
    # per epoch on stock's steps until pull request 3 (upstream_cases.py says which it expects)
    1: "our_package or exact_checkpoints",
    # 0 keeps all: exact_checkpoints[limit_zero_keeps_all] expects it from pull request 2 on
    2: "limit_zero_keeps_all",
    3: "exact_evals or exact_checkpoints",
    4: "killed",
    5: "preempted",
    6: "resumed_eval",
    7: "past_the_end",
}
UPSTREAM_CASES = {n: " or ".join(CASES_ADDED[m] for m in range(1, n + 1)) for n in CASES_ADDED}
# `-- --own-cases`: each pull request runs only the e2e cases it adds, the last one checked runs them
# all (UPSTREAM_CASES grows with every pull request; this keeps a run of the whole series shorter)
OWN_CASES = "--own-cases"
# hooks of Axolotl's .pre-commit-config.yaml that cannot run here, and why
HOOKS_NOT_RUN = {"no-commit-to-branch": "checks the git branch of a commit; the series is not committed to a branch here"}
# an upstream main checkout to try the series on as well (`patch -p1 -F0`, reported, not a gate)
MAIN_TREE_ENV = "AXOLOTL_MAIN_TREE"


def axolotl_tests(session: nox.Session, python: str, tree: Path, report: Path, *paths: str) -> dict[str, str]:
    hub_offline = str(ROOT / "tests" / "upstream")
    present = [p for p in paths if (tree / p).exists()]
    with session.chdir(tree):
        session.run(
            python, "-m", "pytest", "-p", "hub_offline", "-p", "no:cacheprovider", "-q", "--tb=short",
            f"--junitxml={report}", *present,
            env={**UNBUFFERED, "PYTHONPATH": hub_offline}, external=True, success_codes=[0, 1], silent=True,
        )  # fmt: skip
    return junit_outcomes(report)


def series() -> list[Path]:
    return sorted(SERIES.glob("*.diff"))


def changed_files(patch: Path) -> list[str]:
    return [line[6:] for line in patch.read_text().splitlines() if line.startswith("+++ b/")]


def kind(path: str) -> str:
    """``source`` (under src/), ``tests`` (under tests/) or ``docs`` (everything else: docs/, READMEs)."""
    return "source" if path.startswith("src/") else "tests" if path.startswith("tests/") else "docs"


def diff_lines(patch: Path) -> dict[str, list[int]]:
    """Added and removed lines of ``patch`` per :func:`kind`: ``{"source": [added, removed], ...}``."""
    counts = {k: [0, 0] for k in ("source", "tests", "docs")}
    current = None  # the commit message and the stat before the first file: not counted
    for line in patch.read_text().splitlines():
        if line == "-- ":  # git format-patch's signature: the diff has ended
            break
        if line.startswith("diff --git "):
            current = kind(line.split(" b/", 1)[1])
        elif current is None or line.startswith(("--- ", "+++ ")):
            continue
        elif line.startswith("+"):
            counts[current][0] += 1
        elif line.startswith("-"):
            counts[current][1] += 1
    return counts


def sizes(counts: dict[str, list[int]]) -> str:
    return ", ".join(f"{k} +{a} -{r}" for k, (a, r) in counts.items())


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
        session.run("mypy", "--ignore-missing-imports", *py)
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
    """``--from N`` and ``--to M`` at the head of the session's arguments: check pull requests N to M only.

    Defaults: from 1, to the last one. The pull requests before N are still applied (each is
    checked on top of the previous ones); the arguments after them go to pytest, as before.
    """
    bounds: dict[str, int] = {}
    while posargs[:1] in (["--from"], ["--to"]) and len(posargs) >= 2 and posargs[1].isdigit():
        bounds[posargs[0]] = int(posargs[1])
        posargs = posargs[2:]
    return bounds.get("--from", 1), bounds.get("--to"), [a for a in posargs if a != OWN_CASES]


def apply(session: nox.Session, tree: Path, patch: Path) -> None:
    """``patch -p1 -F0`` (3 lines of context, no fuzz): the series applies exactly, or the session fails."""
    with session.chdir(tree):
        session.run("patch", "-p1", "-F0", "--batch", "-s", "-i", str(patch), external=True)


def try_on_main(session: nox.Session, patches: list[Path], work: Path) -> dict[str, list[str]]:
    """The series on the upstream main checkout named by $AXOLOTL_MAIN_TREE, in order: per pull request, what
    ``patch -p1 -F0`` said of each hunk that did not apply as is (an offset or a failure). Not a gate."""
    source = os.environ.get(MAIN_TREE_ENV)
    if not source:
        return {}
    tree = work / "axolotl-main-series"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".git"))
    said = {}
    for patch in patches:
        done = subprocess.run(["patch", "-p1", "-F0", "--batch", "-i", str(patch)], cwd=tree, capture_output=True, text=True)
        lines, current = [], ""
        for line in done.stdout.splitlines():
            if line.startswith("patching file "):
                current = line.removeprefix("patching file ")
            elif line.startswith("Hunk") and ("FAILED" in line or "offset" in line):
                lines.append(f"{current}: {line}")
        said[patch.name] = lines
        failed = sum("FAILED" in line for line in lines)
        session.log(f"{MAIN_TREE_ENV}: {patch.name}: {failed} hunk(s) failed, {len(lines) - failed} at an offset")
    return said


def run(session: nox.Session, axolotl_env: Callable[[nox.Session, str], Path]) -> None:
    """The ``upstream`` session: ``axolotl_env(session, version)`` gives the shared Axolotl venv's python.

    ``nox -s upstream -- --from N --to M`` checks pull requests N to M only (all apply, in order);
    ``-- --own-cases``: each runs only the e2e cases it adds, the last one checked all of them.
    Writes .nox/upstream-series.json (per pull request: lines per kind, hooks, tests, seconds).
    """
    wall = time.monotonic()
    start, end, pytest_args = first_checked(list(session.posargs))
    own_cases = OWN_CASES in session.posargs
    patches = series()
    end = len(patches) if end is None else end
    if not 1 <= start <= end <= len(patches):
        session.error(f"--from {start} --to {end}: the series has pull requests 1 to {len(patches)}")

    work = ROOT / ".nox" / "upstream-work"
    work.mkdir(parents=True, exist_ok=True)
    stock = sdist(session, BASE, work)
    main = try_on_main(session, patches, work)
    shared = axolotl_env(session, BASE)
    venv = ROOT / ".nox" / f"upstream-axolotl-{BASE}"
    session.run(interpreter("3.12"), "-m", "venv", "--clear", str(venv), external=True)
    python = str(venv / "bin" / "python")
    site = session.run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True, external=True)
    shared_site = session.run(
        str(shared), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True, external=True
    )
    # the shared packages come after this venv's own, so the patched Axolotl wins; .pth files
    # there (our editable install) are not processed, so axolotl_savefix is not importable
    (Path(site.strip()) / "shared-axolotl-deps.pth").write_text(shared_site.strip() + "\n")

    tests_so_far = list(UPSTREAM_TESTS)
    for patch in patches:
        tests_so_far += [f for f in changed_files(patch) if kind(f) == "tests" and f.endswith(".py") and f not in tests_so_far]
    stock_results = axolotl_tests(session, str(shared), stock, work / "stock.xml", *tests_so_far)
    tree = work / f"axolotl-{BASE}-series"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(stock, tree)
    report = []
    selection = list(UPSTREAM_TESTS)
    for n, patch in enumerate(patches, 1):
        apply(session, tree, patch)
        changed = changed_files(patch)
        own = [f for f in changed if kind(f) == "tests" and f.endswith(".py")]
        selection += [f for f in own if f not in selection]
        if n < start:
            continue
        if n > end:
            break
        started = time.monotonic()
        cases = CASES_ADDED[n] if own_cases and n < end else UPSTREAM_CASES[n]
        session.run(python, "-m", "pip", "install", "--quiet", "--no-deps", str(tree), external=True)
        hooks = precommit_hooks(session, tree, changed, python)
        results = axolotl_tests(session, python, tree, work / f"patched-{n}.xml", *selection)
        regressions = sorted(k for k, v in results.items() if v != "passed" and stock_results.get(k) == "passed")
        # the tests the series added so far (in a test file it changed, the tests stock has are
        # held by the regression rule: some of them need the Hub and fail on both)
        new = {k: v for k, v in results.items() if k not in stock_results}
        failing_new = sorted(k for k, v in new.items() if v != "passed")
        if regressions or failing_new:
            session.error(f"{patch.name}: regressions {regressions}; failing tests the series added {failing_new}")
        session.run(
            python, "-m", "pytest", "-p", "no:anyio", "-p", "no:cacheprovider", "-q",
            str(ROOT / "tests" / "e2e" / "upstream_cases.py"), "-k", cases, *pytest_args,
            env=venv_env(python, {"SAVEFIX_UPSTREAM_PATCHES": str(n)}), external=True,
        )  # fmt: skip
        lines = diff_lines(patch)
        entry = {
            "patch": patch.name,
            "lines": lines,
            "files": changed,
            "hooks_run": hooks,
            "hooks_not_run": HOOKS_NOT_RUN,
            "axolotl_tests_stock": [len(stock_results), sum(v == "passed" for v in stock_results.values())],
            "axolotl_tests_patched": [len(results), sum(v == "passed" for v in results.values())],
            "tests_added_so_far": [len(new), len(new) - len(failing_new)],
            "regressions": len(regressions),
            "our_e2e_selection": cases,
            "on_main": main.get(patch.name),
            "seconds": round(time.monotonic() - started),
        }
        report.append(entry)
        session.log(
            f"{patch.name}: {sizes(lines)}; hooks {', '.join(hooks)}; Axolotl tests stock "
            f"{entry['axolotl_tests_stock'][1]}/{entry['axolotl_tests_stock'][0]}, patched "
            f"{entry['axolotl_tests_patched'][1]}/{entry['axolotl_tests_patched'][0]}; added by the series "
            f"{entry['tests_added_so_far'][1]}/{entry['tests_added_so_far'][0]}; regressions 0; "
            f"e2e -k {cases!r}; {entry['seconds']} s"
        )
    name = "upstream-series.json" if (start, end) == (1, len(patches)) else f"upstream-series-{start}-to-{end}.json"
    (ROOT / ".nox" / name).write_text(json.dumps(report, indent=2))
    session.log(f"the series applies to axolotl {BASE} with no fuzz; pull requests {start} to {end} checked:")
    for entry in report:
        session.log(f"  {entry['patch']}: {sizes(entry['lines'])}; {entry['seconds']} s")
    session.log(f"wall time {round(time.monotonic() - wall)} s")
    sys.stdout.flush()
