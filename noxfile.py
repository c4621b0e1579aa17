"""Sessions for axolotl-savefix.

The sessions that need Axolotl share one environment per Axolotl version
(``.nox/axolotl-<version>``), built once and reused while its requirements stay
the same: installing Axolotl takes minutes, so CI and ``nox -s tests demo``
install it once. ``unit`` needs no Axolotl and runs in its own small venv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "ci"))  # ci/*.py: plain modules (standard library + nox) that the sessions call
import build_check  # noqa: E402
import compat_cases  # noqa: E402
import compat_sweep  # noqa: E402
import environments  # noqa: E402
import layouts as layouts_ci  # noqa: E402
import slurm as slurm_ci  # noqa: E402
import upstream_check  # noqa: E402
from environments import TARGETS, UNBUFFERED, venv_env  # noqa: E402

TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "pyyaml"]
# Axolotl release -> (Python, torch and what must match it). The releases themselves are
# axolotl_savefix._infra.releases.PROVEN, one list for the package, pyproject, README and this table.
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
RELEASES = {**AXOLOTL, **OUTSIDE}  # every release the noxfile can build an environment for
if tuple(AXOLOTL) != TARGETS.PROVEN:
    raise RuntimeError(f"noxfile AXOLOTL {list(AXOLOTL)} differs from _infra.releases.PROVEN {list(TARGETS.PROVEN)}")


def axolotl_env(session: nox.Session, version: str = DEFAULT_AXOLOTL) -> Path:
    """The shared venv for ``axolotl==version`` with this package installed; its python (ci/environments.py)."""
    python, torch = RELEASES[version]
    return environments.axolotl_env(session, version, python, torch, TEST_DEPS)


@nox.session(venv_backend="none")
def envs(session: nox.Session) -> None:
    """Build the shared Axolotl environments (`nox -s envs -- 0.13.2 0.14.0`; every proven release by default)."""
    versions = session.posargs or list(AXOLOTL)
    for version in versions:
        session.log(f"axolotl {version}: {axolotl_env(session, version)}")
    environments.log_disk(session, versions)


@nox.session(venv_backend="none")
def pin(session: nox.Session) -> None:
    """Write ci/constraints-axolotl-<release>.txt with uv's resolver (`nox -s pin -- 0.13.2`): every package pinned."""
    for version in session.posargs:
        environments.pin(session, version, *RELEASES[version], TEST_DEPS)


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
    tests_impl(
        session,
        "tests",
        "-m",
        "not preemption and not engines and not cli and not disk and not nodes and not deepspeed and not signals and not slurm"
        " and not inputs and not fidelity and not matrix and not layouts",
    )


@nox.session(venv_backend="none")
def matrix(session: nox.Session) -> None:
    """The case table (tests/e2e/cases.py) beyond the reported cases, stock vs patched, and the plan against those runs."""
    tests_impl(session, "tests/e2e", "-m", "matrix")


@nox.session(venv_backend="none")
def cli(session: nox.Session) -> None:
    """Runs through `axolotl train` in its own process: the plugin line, LoRA stock vs patched (`plan`'s inputs: `inputs`)."""
    tests_impl(session, "tests", "-m", "cli")


@nox.session(venv_backend="none")
def inputs(session: nox.Session) -> None:
    """`axolotl-savefix plan` through Axolotl: a schema refusal, stock beside, a silent network (about 2 minutes)."""
    tests_impl(session, "tests", "-m", "inputs")


@nox.session(venv_backend="none")
def preemption(session: nox.Session) -> None:
    """Runs killed by SIGKILL at exact points of a save, or sent a preemption notice (SIGTERM), then resumed by the same command."""
    tests_impl(
        session,
        "tests/e2e/test_preemption.py",
        "tests/e2e/test_preemption_notice.py",
        "tests/e2e/test_preemption_cluster.py",
        "tests/e2e/test_resume_match.py",
        "tests/axolotl/test_preemption_patch.py::test_a_second_signal_or_the_grace_deadline_exits_at_once_with_the_preempted_status",
    )


@nox.session(venv_backend="none")
def fidelity(session: nox.Session) -> None:
    """A resume in epoch 2 (at the first epoch's last save, and mid-epoch 2) against a run never stopped: losses, token counters.

    `nox -s fidelity` on 0.19.0; every release through `nox -s compat` (its case "resume in epoch 2").
    """
    tests_impl(session, "tests/e2e/test_resume_fidelity.py")


@nox.session(venv_backend="none")
def signals(session: nox.Session) -> None:
    """Notices as clusters send them: 2 workers, save_strategy steps/epoch/no, a long eval, a worker fault, PID 1, launchers."""
    tests_impl(session, "tests/e2e/test_signals.py")


# the full disk on 2-process DDP (two torchrun runs, about 3 minutes): in `nodes`, the multi-process session
DDP_DISK = "tests/e2e/test_disk.py::test_ddp_keep_all_on_a_small_disk_stops_clearly_and_does_not_loop"


@nox.session(venv_backend="none")
def disk(session: nox.Session) -> None:
    """A full disk (tmpfs mounts of exact sizes: root on Linux, else skipped), final model too, rotation killed, set-aside bound."""
    tests_impl(session, "tests/e2e/test_disk.py", "--deselect", DDP_DISK)


@nox.session(venv_backend="none")
def engines(session: nox.Session) -> None:
    """2-process DDP, FSDP2 (2 CPU processes, sharded checkpoints, a resume) and DPO, stock vs patched."""
    tests_impl(session, "tests/e2e/test_engines.py", "tests/e2e/test_ddp.py")


@nox.session(venv_backend="none")
def trainers(session: nox.Session) -> None:
    """KTO, ORPO, SimPO and a reward model (TRL's trainers through Axolotl), stock vs patched, exact steps."""
    tests_impl(session, "tests/e2e/test_trainers.py")


@nox.session(venv_backend="none")
def nodes(session: nox.Session) -> None:
    """Two nodes on one machine (torchrun --nnodes 2, a mount namespace each): node-local, shared output_dir; full disk, DDP.

    With the resume decision on 16 gloo processes (2 nodes x 8, decision only: about 2.5 minutes here, process starts).
    """
    tests_impl(session, "tests/e2e/test_nodes.py", "tests/e2e/test_decision_gloo.py", DDP_DISK)


@nox.session(venv_backend="none")
def slurm(session: nox.Session) -> None:
    """The guide's sbatch recipe on a real SLURM (requeue from outside, time limit, torchrun), stock vs patched.

    Installs Debian's slurm-wlm and munge where missing (root, apt), starts a private munged,
    slurmctld and slurmd (ci/slurm.py, .nox/slurm), runs tests/e2e/test_slurm.py, stops them by
    pid. `nox -s slurm -- --repeat 10` runs the patched requeue case 10 times (next seeds); other
    arguments go to pytest (`-- -k requeue`). 21 minutes measured here (6 jobs, load average 4.4).
    """
    slurm_ci.run(session, str(axolotl_env(session)), ROOT)


# DeepSpeed and what its sdist wants, pinned; not in the shared venv (that would rebuild it for every
# session): `nox -s deepspeed` builds .nox/axolotl-0.19.0-deepspeed, the shared venv's pins plus these
DEEPSPEED = ["deepspeed==0.19.8", "hjson==3.1.0", "py-cpuinfo==9.0.0", "msgpack==1.2.4", "ninja==1.13.2"]


def deepspeed_venv(session: nox.Session, env: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """.nox/axolotl-0.19.0-deepspeed's python, and the environment its tests run in (Axolotl's deepspeed_configs/)."""
    python, torch = RELEASES[DEFAULT_AXOLOTL]
    venv = environments.axolotl_env(
        session, DEFAULT_AXOLOTL, python, torch, TEST_DEPS, variant="deepspeed", built_on_torch=DEEPSPEED
    )
    configs = environments.deepspeed_configs(session)
    if configs is None:
        session.error("no Axolotl sdist for deepspeed_configs/ (offline?): the DeepSpeed cases need it")
    return str(venv), venv_env(str(venv), {"SAVEFIX_DEEPSPEED_CONFIGS": str(configs), **(env or {})})


@nox.session(venv_backend="none")
def deepspeed(session: nox.Session) -> None:
    """DeepSpeed ZeRO-2 and ZeRO-3 (Axolotl's deepspeed_configs/) on 2 CPU processes, stock vs patched, a resume."""
    python, run_env = deepspeed_venv(session)
    test = "tests/e2e/test_deepspeed.py"
    session.run(python, "-m", "pytest", "-p", "no:anyio", test, *session.posargs, env=run_env, external=True)


@nox.session(venv_backend="none")
def layouts(session: nox.Session) -> None:
    """Every checkpoint layout a real run writes here (tests/e2e/layouts.py): judged as written, cut at each file, resumed.

    Axolotl 0.19.0 (0.13.2 writes `save_safetensors: false`), then DeepSpeed's layouts in `deepspeed`'s environment.
    The table of issue 37's closing note: .nox/layouts.md.
    """
    layouts_ci.run(session, tests_impl, deepspeed_venv, axolotl_env(session, "0.13.2"))


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
    configs = environments.deepspeed_configs(session)  # from Axolotl's sdist; None offline (those cases skip)
    if configs:
        env["SAVEFIX_DEEPSPEED_CONFIGS"] = str(configs)
    # fidelity compares losses to 1e-4 between two runs: a CPU claim (bf16 kernels on CUDA are not bit-reproducible)
    tests_impl(session, "tests/e2e", "tests/e2e/gpu_engines.py", "-m", "not fidelity", env=env)


# Per proven release (`nox -s compat`): the seams with no training (tests/axolotl), the patched
# subset of real runs, and one stock run that shows the bug there; then the example corpus.
COMPAT_TESTS = [
    "tests/axolotl",
    *compat_cases.node_ids(),  # one real run per patch promise (ci/compat_cases.py), stock beside where it differs
    "tests/e2e/test_matrix.py::test_exact_checkpoints[six_per_epoch-patched]",
    "tests/e2e/test_matrix.py::test_exact_checkpoints[accum_remainder-patched]",
    "tests/e2e/test_evals.py::test_exact_eval_steps[evals_accum-patched]",
    "tests/e2e/test_resume.py",
    "tests/e2e/test_cli.py::test_plugin_line_through_the_axolotl_cli",
]


def examples_impl(session: nox.Session, axolotl: str, junit: Path | None = None) -> tuple[Path, str]:
    """Axolotl's own example configs (from the sdist of ``axolotl``) stock vs with the plugin line.

    With ``junit``, failures are left for the caller to read from that report; returns the
    per-config report and the release whose examples were loaded.
    """
    work = ROOT / ".nox" / "examples-work"
    work.mkdir(parents=True, exist_ok=True)
    source, tree = environments.examples_source(session, axolotl, work)
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
    """One proven release: the patched subset, a real run per patch (ci/compat_cases.py), the corpus; to docs/compat-sweep.json.

    `nox -s compat` runs every release in AXOLOTL; `-s "compat(axolotl='0.13.2')"` one. 0.20+ need python3.12
    (PYENV_VERSION=3.11.7:3.12.1). docs/compatibility.md's table is rewritten from the JSON.
    """
    seconds: dict[str, float] = {}
    with compat_sweep.timed(seconds, "env"):
        python = str(axolotl_env(session, axolotl))
    observations, junit, corpus_junit = reports = compat_sweep.fresh_reports(axolotl)
    with compat_sweep.timed(seconds, "tests"):
        tests_impl(session, *COMPAT_TESTS, axolotl=axolotl, env={"SAVEFIX_COMPAT_REPORT": str(observations)}, junit=junit)
    with compat_sweep.timed(seconds, "corpus"):
        corpus = examples_impl(session, axolotl, corpus_junit)
    compat_sweep.record(session, axolotl, python, reports, corpus, seconds)


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
    """What the plugin costs, stock vs patched: phase by phase on a 600-step case, per-step decision and agreement.

    `nox -s bench -- loop --pairs 6` (parts: loop, inprocess, decision, preemption, checkpoint, accounting; none: all
    of those; `scale` (issue 29) and `plan` only when named: `nox -s bench -- plan --repeats 3`, `plan` on the demo config).
    JSON to .nox/bench.json (`--out`). See tests/e2e/bench.py.
    """
    run_script(session, "bench.py", *session.posargs)


@nox.session(venv_backend="none")
def chaos(session: nox.Session) -> None:
    """Real runs SIGKILLed at random instants, resumed by the same command until they complete; checked after each.

    `nox -s chaos -- --seed S --kills N --engines single,ddp,fsdp` (N per engine; a failing seed replays).
    Summary: .nox/chaos.json. See tests/e2e/chaos.py.
    """
    run_script(session, "chaos.py", *session.posargs)


@nox.session(python="3.11")
def bench_plan(session: nox.Session) -> None:
    """`axolotl-savefix plan` on a 1M-step config: median time, JSON to .nox/bench-plan.json (no Axolotl)."""
    session.install("-e", ".")
    out = session.posargs[0] if session.posargs else str(ROOT / ".nox" / "bench-plan.json")
    session.run("python", str(ROOT / "tests" / "bench_plan.py"), out, env=UNBUFFERED)


@nox.session(python="3.12")
def upstream(session: nox.Session) -> None:
    """The upstream series, verified pull request by pull request on Axolotl 0.21.0's own source (docs/upstream/series/).

    Python 3.12 (Axolotl 0.20 on needs it). Each pull request is applied with ``patch -p1 -F0``
    on top of the previous ones to the 0.21.0 sdist (the series' base); then, for each: Axolotl's
    pre-commit hooks on the files it changes; Axolotl's tests for the changed code, stock and
    patched, and the pull request's own tests (offline: tests that need the Hub fail both ways, so
    the gate is "nothing that passed on stock fails patched, and every test the pull request adds
    passes"); our e2e cases on the patched Axolotl without axolotl_savefix. Each pull request's
    added and removed lines are printed per kind (source, tests, docs). With $AXOLOTL_MAIN_TREE
    (an upstream main checkout), the series is also tried there and what did not apply is reported.

    ``nox -s upstream -- --from N --to M`` checks pull requests N to M only (all still apply in
    order). Writes .nox/upstream-series.json (per pull request: lines, hooks, tests, seconds).
    """
    upstream_check.run(session, axolotl_env)


@nox.session(venv_backend="none")
def build(session: nox.Session) -> None:
    """The wheel and sdist into dist/ (uv build), then the wheel alone (no deps) in a fresh venv: `--version` and a plan.

    That venv has no Axolotl: `plan --steps-per-epoch` needs only PyYAML, which the wheel requires. Then
    :func:`install_check`: the README's `pip install .` in a fresh venv beside a plain Axolotl 0.19.0.
    """
    build_check.run(session, DEFAULT_AXOLOTL, AXOLOTL[DEFAULT_AXOLOTL])


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format) on everything; mypy on the package (pyproject's [tool.mypy])."""
    session.install("ruff", "mypy", "pydantic", "pyyaml", "types-PyYAML")
    session.run("ruff", "check", "patches", "tests", "ci", "noxfile.py")
    session.run("ruff", "format", "--check", "patches", "tests", "ci", "noxfile.py")
    session.run("mypy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with nox")
