"""A preemption notice (SIGTERM, SIGINT, a chosen signal) costs zero steps, and the schedule stays exact.

Each run is a fresh training process. The first gets a real signal at an exact point
(tests/e2e/signal_shim.py: at the end of step N, during a scheduled save, to one rank only) or from
this test, from outside; it must save ``checkpoint-N`` where it is and exit ``128 + signal``. The
second is the same command (``auto_resume_from_checkpoints: true`` all along): it must resume at N and
end with exactly the reference's saved and kept steps, every step trained once. Stock Axolotl gets the
same signal beside it, and what it does is asserted and printed.

The signalled step is drawn at random from a seeded generator (``SAVEFIX_PREEMPT_SEED``, default 20),
printed with the seed. Each case prints one ``[preemption]`` line: step signalled, step saved, steps
lost, exit status, and stock's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import cases
import harness
import pytest
import reference
import yaml
from test_preemption import assert_complete

pytestmark = [pytest.mark.e2e, pytest.mark.preemption]

HERE = harness.Path(__file__).parent
ENV = {"PYTHONPATH": str(HERE)}
CASE = {**cases.case("reported"), "num_epochs": 1}  # 30 steps, 4 saves per epoch: 8 15 23 30 (one process)
SEED = int(os.environ.get("SAVEFIX_PREEMPT_SEED", "20"))
MARKER = "savefix_preemption.json"
SIGTERM = 128 + signal.SIGTERM  # 143: the documented "preempted" status


def _shape(world: int = 1) -> tuple[int, int, int, int, float]:
    L = CASE["samples"] // (CASE["micro_batch"] * world)
    G, k, epochs = CASE["grad_accum"], CASE["saves_per_epoch"], CASE["num_epochs"]
    M = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], G, epochs, world)
    return L, G, k, M, epochs


def expected(world: int = 1, *, stock: bool = False, limit: int | None = None) -> tuple[list[int], list[int]]:
    """(saved, kept) for an uninterrupted run, from the rules (tests/reference.py)."""
    L, G, k, M, epochs = _shape(world)
    saved = reference.stock_saves(L, G, k, epochs, M) if stock else reference.patched_saves(L, G, k, M)
    kept = reference.kept(saved, 4 if stock and limit is None else limit)
    return saved, kept


def random_step(world: int, label: str) -> int:
    """A step off the schedule, drawn from the seeded generator (printed, so a failure can be replayed)."""
    saved, _ = expected(world)
    rng = random.Random(f"{SEED}:{label}")
    step = rng.choice([s for s in range(saved[0] + 1, saved[-2]) if s not in saved])  # scheduled saves ahead
    print(f"[preemption] {label}: SAVEFIX_PREEMPT_SEED={SEED} -> signal at step {step}")
    return step


def _config(root, name, *, plugin: bool, shims=(), **extra):
    config = harness.write_config(CASE, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    cfg["plugins"] = [*shims, "signal_shim.SignalShim", *(cfg.get("plugins") or [])]
    cfg["auto_resume_from_checkpoints"] = True
    cfg.update(extra)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def python_launch(config) -> list[str]:
    """One training process, no launcher in between (``axolotl train`` execs ``accelerate launch``, which turns
    any failure status into 1 and does not pass SIGTERM on): what a scheduler's notice reaches. The other
    one-process runs here are the same ``python -m axolotl.cli.train``, forked from the harness' fork server
    (``harness.run_cli_raw`` with no launcher; tests/e2e/zygote.py): a real process, its own exit status."""
    return [str(harness.Path(sys.executable).parent / "python"), "-m", "axolotl.cli.train", str(config)]


def state_at(folder) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def losses(log_history) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in log_history if "loss" in e}


def resumed_from(log: str) -> int | None:
    import re

    found = re.findall(r"resume from checkpoint at \S*checkpoint-(\d+)", log)
    return int(found[-1]) if found else None


def report(case: str, **numbers) -> None:
    print(f"[preemption] {case}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))


def check_resumed(config, second_log: str, stop: int, world: int = 1, limit: int | None = None):
    """The second run: resumed at ``stop``, saved exactly the scheduled steps ahead, kept the reference's."""
    out = harness.output_dir(config)
    saved, kept = expected(world, limit=limit)
    observed = harness.observe(out, second_log)
    assert resumed_from(second_log) == stop, second_log[-3000:]
    assert observed.saved == [s for s in saved if s > stop]
    assert observed.kept == kept
    assert not list(out.glob("incomplete-*"))
    for step in observed.kept:
        assert_complete(out / f"checkpoint-{step}", step, world)
        assert not (out / f"checkpoint-{step}" / MARKER).exists()
    # every step trained once: 1..stop by the first run, stop+1..M by the second (nothing twice, nothing skipped)
    history = losses(observed.log_history)
    assert sorted(history) == list(range(1, _shape(world)[3] + 1))
    assert f"resumed at step {stop} from checkpoint-{stop}" in second_log
    return observed


def check_preempted(config, code: int, first_log: str, stop: int, *, world: int = 1, status: int = SIGTERM):
    out = harness.output_dir(config)
    assert code == status, first_log[-3000:]
    # what the run said first: a failure below then shows the run's own account of the stop (its log's tail)
    assert f"every rank stops after step {stop}" in first_log, first_log[-3000:]
    folder = out / f"checkpoint-{stop}"
    kept = sorted(p.name for p in out.iterdir())
    assert folder.is_dir(), (kept, first_log[-3000:])
    assert (folder / "trainer_state.json").is_file(), (sorted(p.name for p in folder.iterdir()), first_log[-3000:])
    assert_complete(folder, stop, world)
    assert not (out / "model.safetensors").exists()  # no weights-only "final" model in output_dir
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))[-1] == stop
    return folder


def stock_beside(root, name: str, step: int, env_signal: str) -> dict:
    """Stock Axolotl, the same signal at the same step, then the same command: what it kept and lost."""
    config = _config(root, f"{name}-stock", plugin=False)
    out = harness.output_dir(config)
    code, first = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_SIGNAL_AT": env_signal}, log_name="first.log")
    stock_saved, _ = expected(stock=True)
    at_signal = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert at_signal == [s for s in stock_saved if s <= step]  # nothing saved at the signal
    code2, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code2 == 0, second[-3000:]
    back_to = resumed_from(second) or 0
    assert back_to == (at_signal[-1] if at_signal else 0)
    return {"status": code, "resumed_from": back_to, "lost": step - back_to}


def test_sigterm_at_a_random_step_resumes_with_the_losses_of_an_uninterrupted_run(e2e_root):
    """Single process. The named test: every step's training loss after the resume equals the uninterrupted run's."""
    step = random_step(1, "single")
    config = _config(e2e_root, "notice-single", plugin=True)
    code, first = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_SIGNAL_AT": f"{step}:SIGTERM"}, log_name="first.log")
    folder = check_preempted(config, code, first, step)
    assert json.loads((folder / MARKER).read_text())["global_step"] == step
    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-3000:]
    resumed = check_resumed(config, second, step)
    assert not folder.exists()  # the preemption checkpoint, removed once a later one was complete

    straight_config = _config(e2e_root, "notice-straight", plugin=True)
    straight = harness.run_cli(straight_config, env=ENV)
    ours, theirs = losses(resumed.log_history), losses(straight.log_history)
    assert sorted(ours) == sorted(theirs)
    for s in theirs:
        assert abs(ours[s] - theirs[s]) <= 1e-4 * abs(theirs[s]), (s, ours[s], theirs[s])
    report("single process, SIGTERM", signalled=step, saved=step, lost=0, status=SIGTERM)


def test_stock_dies_of_sigterm_and_retrains_the_steps_since_its_last_checkpoint(e2e_root):
    """Stock beside the named test: the same signal at the same step, then the same command."""
    step = random_step(1, "single")
    stock = stock_beside(e2e_root, "notice-single", step, f"{step}:SIGTERM")
    assert stock["status"] == -signal.SIGTERM  # dies of the signal: nothing saved
    assert stock["lost"] > 0
    report("stock, SIGTERM", signalled=step, saved="nothing", **stock)


def test_a_configured_sigusr1_during_a_scheduled_save_stops_right_after_it(e2e_root):
    """SLURM's --signal=USR1@90 with savefix_preemption_signal: SIGUSR1, landing while checkpoint-23 is written."""
    saved, _ = expected()
    cut = saved[2]
    config = _config(e2e_root, "notice-during-save", plugin=True, savefix_preemption_signal="SIGUSR1")
    code, first = harness.run_cli_raw(
        config,
        env={**ENV, "SAVEFIX_SIGNAL_AT": f"{cut}:SIGUSR1::save"},
        log_name="first.log",
    )
    folder = check_preempted(config, code, first, cut, status=128 + signal.SIGUSR1)
    assert not (folder / MARKER).exists()  # the scheduled checkpoint itself: no extra one
    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-3000:]
    check_resumed(config, second, cut)
    report("single process, SIGUSR1 during the scheduled save", signalled=cut, saved=cut, lost=0, status=128 + 10)


def test_stock_sigint_writes_weights_only_into_output_dir_and_exits_0(e2e_root):
    """Stock, verified on a real run: SIGINT saves model weights alone into output_dir and reports success."""
    step = random_step(1, "stock-sigint")
    config = _config(e2e_root, "notice-stock-sigint", plugin=False)
    out = harness.output_dir(config)
    code, log = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_SIGNAL_AT": f"{step}:SIGINT"}, log_name="first.log")
    assert code == 0, log[-3000:]
    assert (out / "model.safetensors").is_file()
    assert not (out / "trainer_state.json").exists() and not (out / "optimizer.pt").exists()
    assert not (out / f"checkpoint-{step}").exists()
    report("stock SIGINT", signalled=step, saved="weights only, in output_dir", status=code)


def test_sigterm_from_outside_with_a_save_total_limit(e2e_root):
    """The parent sends SIGTERM once checkpoint-15 is on disk; rotation (limit 3) never counts the extra checkpoint."""
    saved, _ = expected()
    config = _config(e2e_root, "notice-outside", plugin=True, save_total_limit=3)
    out = harness.output_dir(config)
    env = {**os.environ, **harness.OFFLINE, **ENV}
    log_path = config.parent / "first.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(python_launch(config), env=env, stdout=log_file, stderr=subprocess.STDOUT)
        watched = out / f"checkpoint-{saved[1]}" / "trainer_state.json"
        while proc.poll() is None and not watched.exists():
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=600)
        took = time.monotonic() - sent
    first = log_path.read_text()
    import re

    stop = int(re.findall(r"every rank stops after step (\d+)", first)[0])
    assert saved[1] <= stop < saved[2] or stop == saved[2]
    check_preempted(config, code, first, stop)
    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-3000:]
    check_resumed(config, second, stop, limit=3)
    report("single process, SIGTERM from outside", signalled=f"~{stop}", saved=stop, lost=0, status=code and SIGTERM,
           signal_to_exit_s=round(took, 2))  # fmt: skip


def _torchrun(config, first_env, log_name):
    launch = harness.torchrun(config, 2)
    env = {**ENV, "ACCELERATE_USE_CPU": "true", **first_env}
    return harness.run_cli_raw(config, launcher=launch, env=env, log_name=log_name)


WORKER_STATUS = f"exitcode  : {SIGTERM}"  # torchrun's failure report names each worker's status; torchrun itself exits 1


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(engine, e2e_root):
    """2 processes (CPU, gloo): rank 1 alone gets SIGTERM; both stop, save and exit 143 at that step."""
    world = 2
    step = random_step(world, engine)
    shims = ["cpu_ddp_shim.CpuDdpShim"] if engine == "ddp" else ["cpu_fsdp_shim.CpuFsdpShim", "save_log.SaveLog"]
    extra = {}
    if engine == "fsdp2":
        extra = dict(harness.FSDP2)
    config = _config(e2e_root, f"notice-{engine}", plugin=True, shims=shims, **extra)
    out = harness.output_dir(config)
    first_code, first = _torchrun(config, {"SAVEFIX_SIGNAL_AT": f"{step}:SIGTERM:1"}, "first.log")
    assert first_code != 0 and WORKER_STATUS in first, first[-4000:]
    assert f"[signal_shim] SIGTERM at the end of step {step} (rank 1)" in first
    assert "(rank 0)" not in first.split("[signal_shim]")[1].splitlines()[0]
    assert f"every rank stops after step {step}" in first
    if engine == "ddp":
        assert_complete(out / f"checkpoint-{step}", step, world)
    assert (out / f"checkpoint-{step}" / MARKER).is_file()
    code, second = _torchrun(config, {}, "second.log")
    assert code == 0, second[-4000:]
    saved, kept = expected(world)
    observed = harness.observe(out, second)
    assert resumed_from(second) == step
    assert f"resumed at step {step} from checkpoint-{step}" in second
    assert observed.saved == [s for s in saved if s > step]
    assert observed.kept == kept
    assert sorted(losses(observed.log_history)) == list(range(1, _shape(world)[3] + 1))
    report(f"2-process {engine}, SIGTERM to rank 1 only", signalled=step, saved=step, lost=0,
           status=f"143 per worker (torchrun {first_code})")  # fmt: skip
