"""Sessions for axolotl-savefix.

The sessions that need Axolotl share one environment per Axolotl version
(``.nox/axolotl-<version>``), built once and reused while its requirements stay
the same: installing Axolotl takes minutes, so CI and ``nox -s tests demo``
install it once. ``unit`` needs no Axolotl and runs in its own small venv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "pyyaml"]
# uv builds the Axolotl environments: each release pulls a multi-GB torch, and uv's cache
# hardlinks what releases share (one torch 2.8.0 for 0.13.2 to 0.16.1). Installed on first use.
UV = "uv==0.13.9"
# Axolotl release -> (Python, torch and what must match it). The releases themselves are
# axolotl_savefix._targets.PROVEN, one list for the package, pyproject, README and this table.
# Everything else is pinned in ci/constraints-axolotl-<release>.txt (`nox -s pin -- <release>`).
AXOLOTL = {
    # xformers 0.0.32.post2 (required by 0.13.2 to 0.16.1) pins torch 2.8.0; without torchvision
    # a stock `axolotl train` on 0.13.x dies at import (SmolVLMProcessor)
    "0.13.2": ("3.11", ["torch==2.8.0", "torchvision==0.23.0"]),
    "0.14.0": ("3.11", ["torch==2.8.0", "torchvision==0.23.0"]),
    "0.15.0": ("3.11", ["torch==2.8.0", "torchvision==0.23.0"]),
    "0.16.1": ("3.11", ["torch==2.8.0", "torchvision==0.23.0"]),
    # 0.17.0's load_cfg dies on a CPU-only torch build (compute_supports_fp8 catches RuntimeError,
    # not the AssertionError of "Torch not compiled with CUDA enabled"; fixed in 0.18.0), stock
    # or patched: PyPI's CUDA build, which runs on the CPU (the same torch as 0.18.0's)
    "0.17.0": ("3.11", ["torch==2.12.1"]),
    "0.18.0": ("3.11", ["torch==2.12.1"]),  # torch<=2.12.1
    "0.19.0": ("3.11", ["torch==2.13.0"]),
    "0.20.0": ("3.12", ["torch==2.14.0"]),  # Python>=3.12, torch<=2.14.0
    "0.21.0": ("3.12", ["torch==2.14.1"]),
}
# Releases before the proven range, tried with `nox -s outside`: what happens there is reported
# (docs/compatibility.md), not promised.
OUTSIDE = {
    "0.12.2": ("3.11", ["torch==2.6.0", "torchvision==0.21.0"]),  # xformers 0.0.29.post3 pins torch 2.6.0
    "0.10.0": ("3.11", ["torch==2.6.0", "torchvision==0.21.0"]),
}
DEFAULT_AXOLOTL = "0.19.0"  # `tests`, `examples`, `preemption`, `engines`: one release, the newest for Python 3.11
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}  # the harness itself keeps Axolotl offline (tests/fixture.py)
RELEASES = {**AXOLOTL, **OUTSIDE}  # every release the noxfile can build an environment for
LOCAL_WHEELS = Path("/opt/wheels")  # where this machine keeps its CPU torch; uv does not read pip's config


def _load_targets():
    """axolotl_savefix/_targets.py (standard library only) loaded on its own: nox runs outside the package's env."""
    spec = importlib.util.spec_from_file_location("savefix_targets", ROOT / "patches" / "axolotl_savefix" / "_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TARGETS = _load_targets()
if tuple(AXOLOTL) != _TARGETS.PROVEN:
    raise RuntimeError(f"noxfile AXOLOTL {list(AXOLOTL)} differs from _targets.PROVEN {list(_TARGETS.PROVEN)}")


def _find_links() -> list[str]:
    return ["--find-links", str(LOCAL_WHEELS)] if LOCAL_WHEELS.is_dir() else []


def _python(version: str) -> str:
    found = shutil.which(f"python{version}")
    if found is None:
        raise RuntimeError(
            f"python{version} is not on PATH. With pyenv: PYENV_VERSION={version}.x or `pyenv global 3.11.7 3.12.1`."
        )
    return found


def _uv(session: nox.Session) -> str:
    """uv: the one on PATH, else a pinned one installed once into .nox/uv-tool."""
    found = shutil.which("uv")
    if found:
        return found
    tool = ROOT / ".nox" / "uv-tool"
    uv = tool / "bin" / "uv"
    if not uv.exists():
        session.run(sys.executable, "-m", "venv", "--clear", str(tool), external=True)
        session.run(str(tool / "bin" / "python"), "-m", "pip", "install", "--quiet", UV, external=True)
    return str(uv)


def _tree_bytes(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk under ``path``, each hardlinked file counted once (across calls sharing ``seen``)."""
    seen = set() if seen is None else seen
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def axolotl_env(session: nox.Session, version: str = DEFAULT_AXOLOTL) -> Path:
    """The shared venv for ``axolotl==version`` with this package installed; its python.

    Built with uv from ci/constraints-axolotl-<version>.txt (every package pinned, so CI
    installs what was tested); rebuilt only when the pins change. Each build appends its
    time and the bytes it added to the uv cache to .nox/env-builds.json.
    """
    python, torch = RELEASES[version]
    venv = ROOT / ".nox" / f"axolotl-{version}"
    bin_dir = venv / "bin"
    constraints = ROOT / "ci" / f"constraints-axolotl-{version}.txt"
    uv = _uv(session)
    stamp_text = json.dumps({"python": python, "torch": torch, "test": TEST_DEPS, "pins": constraints.read_text()})
    stamp = venv / ".savefix-stamp"
    if not (stamp.exists() and stamp.read_text() == stamp_text):
        session.log(f"building the shared Axolotl {version} environment in {venv} with uv (minutes, once)")
        cache = Path(session.run(uv, "cache", "dir", silent=True, external=True).strip())
        cache_before = _tree_bytes(cache) if cache.exists() else 0
        start = time.monotonic()
        session.run(uv, "venv", "--quiet", "--clear", "--seed", "--python", _python(python), str(venv), external=True)
        session.run(
            uv, "pip", "install", "--quiet", "--python", str(bin_dir / "python"), *_find_links(),
            "-c", str(constraints), *torch, f"axolotl=={version}", *TEST_DEPS, external=True,
        )  # fmt: skip
        seconds = time.monotonic() - start
        record = {
            "axolotl": version,
            "seconds": round(seconds, 1),
            "uv_cache_bytes_added": _tree_bytes(cache) - cache_before,
            "venv_bytes": _tree_bytes(venv),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        log = ROOT / ".nox" / "env-builds.json"
        builds = json.loads(log.read_text()) if log.exists() else []
        log.write_text(json.dumps([*builds, record], indent=2))
        session.log(f"axolotl {version} environment: {seconds:.0f} s, {record['uv_cache_bytes_added'] / 1e9:.2f} GB downloaded")
        stamp.write_text(stamp_text)
    # this package changes between runs: always reinstall it (fast, no dependencies)
    session.run(uv, "pip", "install", "--quiet", "--python", str(bin_dir / "python"), "--no-deps", "-e", str(ROOT), external=True)
    return bin_dir / "python"


@nox.session(venv_backend="none")
def envs(session: nox.Session) -> None:
    """Build the shared Axolotl environments (`nox -s envs -- 0.13.2 0.14.0`; every proven release by default)."""
    versions = session.posargs or list(AXOLOTL)
    for version in versions:
        session.log(f"axolotl {version}: {axolotl_env(session, version)}")
    cache = Path(session.run(_uv(session), "cache", "dir", silent=True, external=True).strip())
    seen: set[tuple[int, int]] = set()
    in_cache = _tree_bytes(cache, seen)
    in_envs = sum(_tree_bytes(ROOT / ".nox" / f"axolotl-{v}", seen) for v in versions)
    session.log(
        f"disk: {in_cache / 1e9:.1f} GB in uv's cache, {in_envs / 1e9:.1f} GB more for the {len(versions)} "
        "environments (their packages are hardlinks into the cache)"
    )


@nox.session(venv_backend="none")
def pin(session: nox.Session) -> None:
    """Write ci/constraints-axolotl-<release>.txt with uv's resolver (`nox -s pin -- 0.13.2`): every package pinned."""
    uv = _uv(session)
    for version in session.posargs:
        python, torch = RELEASES[version]
        wanted = [f"axolotl=={version}", *torch, *TEST_DEPS]
        work = ROOT / ".nox" / "pin"
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{version}.in").write_text("\n".join(wanted) + "\n")
        session.run(
            uv, "pip", "compile", "--quiet", "--python", _python(python), *_find_links(), "--no-annotate", "--no-header",
            str(work / f"{version}.in"), "-o", str(work / f"{version}.txt"), external=True,
        )  # fmt: skip
        # torch==2.13.0+cpu -> torch==2.13.0: the local CPU build where there is one, PyPI's elsewhere
        pins = re.sub(r"^(torch\S*)==([^+\s]+)\+\S+$", r"\1==\2", (work / f"{version}.txt").read_text(), flags=re.M)
        header = (
            f"# constraints for the axolotl=={version} test environment (nox: axolotl_env), from `uv pip compile` "
            f"on {time.strftime('%Y-%m-%d')}\n# of: {' '.join(wanted[1:])} (nox -s pin -- {version})\n"
        )
        (ROOT / "ci" / f"constraints-axolotl-{version}.txt").write_text(header + pins)


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
    axolotl: str | None = DEFAULT_AXOLOTL,
    env: dict[str, str] | None = None,
    junit: Path | None = None,
) -> None:
    """Run pytest on ``paths`` (knobs: which Axolotl; extra environment; with ``junit``, a
    report there and failing tests left for the caller to read from it)."""
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
        *([f"--junitxml={junit}"] if junit else []),
        *session.posargs,
        env=run_env,
        external=True,
        success_codes=[0, 1] if junit else [0],
    )


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Unit, patching, Trainer, the in-process CPU e2e matrix (CLI runs: `cli`; kills: `preemption`; FSDP2, DPO: `engines`)."""
    tests_impl(session, "tests", "-m", "not preemption and not engines and not cli")


@nox.session(venv_backend="none")
def cli(session: nox.Session) -> None:
    """Runs through `axolotl train` in its own process: the plugin line, LoRA stock vs patched (about 3 minutes)."""
    tests_impl(session, "tests", "-m", "cli")


@nox.session(venv_backend="none")
def preemption(session: nox.Session) -> None:
    """Runs killed by SIGKILL at exact points of a save, or sent a preemption notice (SIGTERM), then resumed by the same command."""
    tests_impl(session, "tests/e2e/test_preemption.py", "tests/e2e/test_preemption_notice.py")


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


# Per proven release (`nox -s compat`): the seams with no training (tests/axolotl), the patched
# subset of real runs, and one stock run that shows the bug there; then the example corpus.
COMPAT_TESTS = [
    "tests/axolotl",
    "tests/e2e/test_matrix.py::test_exact_checkpoints[reported-stock]",
    "tests/e2e/test_matrix.py::test_exact_checkpoints[reported-patched]",
    "tests/e2e/test_matrix.py::test_exact_checkpoints[six_per_epoch-patched]",
    "tests/e2e/test_matrix.py::test_exact_checkpoints[accum_remainder-patched]",
    "tests/e2e/test_evals.py::test_exact_eval_steps[evals_accum-patched]",
    "tests/e2e/test_resume.py",
    "tests/e2e/test_cli.py::test_plugin_line_through_the_axolotl_cli",
]
SWEEP = ROOT / "docs" / "compat-sweep.json"  # what `compat` found, per release; docs/compatibility.md is made from it
VERSIONS = (
    "import json, platform; from importlib.metadata import version as v; "
    "print(json.dumps({'python': platform.python_version(), 'transformers': v('transformers'), "
    "'torch': v('torch'), 'trl': v('trl'), 'accelerate': v('accelerate')}))"
)


def _examples_source(session: nox.Session, axolotl: str, work: Path) -> tuple[str, Path]:
    """The release whose sdist gives ``axolotl``'s example corpus, and its unpacked tree.

    The sdists of 0.13.2 to 0.16.1 ship no examples/ (0.17.0 is the first that does); their
    corpus is the oldest later proven release's examples, loaded by the installed release.
    """
    later = [v for v in AXOLOTL if _TARGETS.release_tuple(v) >= _TARGETS.release_tuple(axolotl)]
    for version in later:
        tree = _sdist(session, version, work)
        if any((tree / "examples").rglob("*.y*ml")):
            if version != axolotl:
                session.log(f"axolotl {axolotl}'s sdist has no examples/: its corpus is {version}'s examples")
            return version, tree
    raise RuntimeError(f"no sdist from {axolotl} on ships examples/")


def examples_impl(session: nox.Session, axolotl: str, junit: Path | None = None) -> tuple[Path, str]:
    """Axolotl's own example configs (from the sdist of ``axolotl``) stock vs with the plugin line.

    With ``junit``, failures are left for the caller to read from that report; returns the
    per-config report and the release whose examples were loaded.
    """
    work = ROOT / ".nox" / "examples-work"
    work.mkdir(parents=True, exist_ok=True)
    source, tree = _examples_source(session, axolotl, work)
    report = ROOT / ".nox" / f"examples-{axolotl}.json"
    report.unlink(missing_ok=True)
    env = {"SAVEFIX_EXAMPLES_ROOT": str(tree), "SAVEFIX_EXAMPLES_REPORT": str(report)}
    tests_impl(session, "tests/examples/corpus_check.py", "-s", axolotl=axolotl, env=env, junit=junit)
    session.log(f"per-config results: {report}")
    return report, source


@nox.session(venv_backend="none")
def examples(session: nox.Session) -> None:
    """Every example config in Axolotl 0.19.0's sdist: what stock accepts, the plugin accepts (about a minute)."""
    examples_impl(session, DEFAULT_AXOLOTL)


@nox.session(venv_backend="none")
@nox.parametrize("axolotl", list(AXOLOTL))
def compat(session: nox.Session, axolotl: str) -> None:
    """One proven release: the patched subset, one stock case, the example corpus; results to docs/compat-sweep.json.

    `nox -s compat` runs every release in AXOLOTL; `-s "compat(axolotl='0.13.2')"` one. 0.20+ need python3.12
    (PYENV_VERSION=3.11.7:3.12.1). docs/compatibility.md's table is rewritten from the JSON.
    """
    started = time.monotonic()
    python = str(axolotl_env(session, axolotl))
    env_seconds = time.monotonic() - started
    work = ROOT / ".nox" / "compat"
    work.mkdir(parents=True, exist_ok=True)
    observations, junit, corpus_junit = (work / f"{axolotl}{ext}" for ext in (".jsonl", ".xml", "-corpus.xml"))
    for path in (observations, junit, corpus_junit):
        path.unlink(missing_ok=True)
    tests_started = time.monotonic()
    tests_impl(session, *COMPAT_TESTS, axolotl=axolotl, env={"SAVEFIX_COMPAT_REPORT": str(observations)}, junit=junit)
    tests_seconds = time.monotonic() - tests_started
    corpus_started = time.monotonic()
    corpus_report, corpus_source = examples_impl(session, axolotl, corpus_junit)
    corpus_seconds = time.monotonic() - corpus_started

    outcomes = _junit_outcomes(junit) if junit.exists() else {}
    corpus_outcomes = _junit_outcomes(corpus_junit) if corpus_junit.exists() else {}
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
        "corpus_from": corpus_source,
        "corpus": {k: summary[k] if isinstance(summary.get(k), int) else len(summary.get(k) or []) for k in (
            "configs", "accepted_by_both", "refused_by_both", "refused_by_patch_only", "accepted_by_patch_only", "plan_crashes")},
        "seconds": {"env": round(env_seconds, 1), "tests": round(tests_seconds, 1), "corpus": round(corpus_seconds, 1)},
    }  # fmt: skip
    sweep = json.loads(SWEEP.read_text()) if SWEEP.exists() else {}
    sweep[axolotl] = entry
    SWEEP.write_text(json.dumps(dict(sorted(sweep.items(), key=lambda kv: _TARGETS.release_tuple(kv[0]))), indent=1) + "\n")
    session.run(sys.executable, str(ROOT / "ci" / "compat_doc.py"), external=True)
    if failed:
        session.error(f"axolotl {axolotl}: {len(failed)} failed: {', '.join(failed)}")


@nox.session(venv_backend="none")
@nox.parametrize("axolotl", list(OUTSIDE))
def outside(session: nox.Session, axolotl: str) -> None:
    """A release before the proven range: runs patched with one warning, or fails naming the release (.nox/outside-*.json)."""
    report = ROOT / ".nox" / f"outside-{axolotl}.json"
    report.unlink(missing_ok=True)
    try:
        tests_impl(session, "tests/e2e/outside_check.py", axolotl=axolotl, env={"SAVEFIX_OUTSIDE_REPORT": str(report)})
    finally:
        if report.exists():
            session.log(report.read_text())


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
    """Axolotl's sdist from PyPI, unpacked fresh into ``work``: its src/, tests/ and pyproject.toml.

    Found in PyPI's simple index (PEP 691 JSON) and checked against its sha256 (``pip download``
    would build it in an isolated environment first, installing its build requirements).
    """
    archive = work / f"axolotl-{version}.tar.gz"
    if not archive.exists():
        import hashlib
        import urllib.request

        index = urllib.request.Request(
            "https://pypi.org/simple/axolotl/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(index, timeout=60) as reply:
            (sdist,) = [f for f in json.load(reply)["files"] if f["filename"] == archive.name]
        session.log(f"downloading {sdist['url']}")
        with urllib.request.urlopen(sdist["url"], timeout=300) as reply:
            data = reply.read()
        if hashlib.sha256(data).hexdigest() != sdist["hashes"]["sha256"]:
            raise RuntimeError(f"{sdist['url']}: sha256 differs from PyPI's record")
        archive.write_bytes(data)
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
    session.run("ruff", "check", "patches", "tests", "ci", "noxfile.py")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with nox")
