"""Chaos: SIGKILL a real ``axolotl train`` at random instants, run the same command again, until it completes.

Seeded. Each kill is either

* ``timer``: the parent SIGKILLs the whole process group (every rank and torchrun) after a delay
  drawn uniformly over the run's wall time (measured by a clean run of the same engine first), or
* a shim kill (tests/e2e/chaos_shim.py, in every rank): the run SIGKILLs itself at the n-th
  hooked call inside a save (weights, optimizer, scheduler, RNG, ``trainer_state.json``, FSDP's
  sharded state, the final model), inside rotation (Transformers' ``shutil.rmtree`` of the
  oldest checkpoint) or inside the resume scan's set-aside (its moves and deletes): the
  windows where a kill does damage, tried far more often than a uniform instant would.

Every kill's phase (``save``, ``rotation``, ``set-aside``, ``elsewhere``) is read from the
shim's trace (for the timer: the window open when the group died). After every kill the same
command runs again; a case ends when a run exits 0, then it is checked, **without importing
axolotl_savefix**:

* saved exactly the reference schedule (tests/reference.py): every ``checkpoint-N`` ever seen
  on disk is a step of it, and every step of it was saved by some run;
* kept exactly what the limit says (``reference.kept``);
* every kept checkpoint loadable: ``trainer_state.json``'s ``global_step``, every safetensors
  tensor read, ``torch.load`` of optimizer, scheduler and every rank's RNG state; FSDP: each
  sharded folder's ``.metadata`` read by ``torch.distributed.checkpoint`` and every shard file
  it names present and long enough;
* no incomplete ``checkpoint-*``; set-aside (``incomplete-*``) folders within the policy of
  issue 19: at most one, and only a checkpoint that was newer than the newest complete one
  when it was set aside (an older one is garbage and deleted);
* the plan every run logged (``[axolotl_savefix] INFO: plan: ... saves at ...``) is the whole run's.

Bounded: each run has a wall-clock limit (a hang fails the case), each case a cap on restarts.

Replay a seed: ``nox -s chaos -- --seed S --kills N [--engines single,ddp,fsdp]`` (``--engines single:60,ddp:20``:
kills per engine, overriding N)
(or ``python tests/e2e/chaos.py`` with the Axolotl environment's python). Writes a JSON summary
(N, seed, kills per phase, restarts, time per kill per engine) to ``--out`` (``.nox/chaos.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # harness, reference, fixture

import harness  # noqa: E402
import reference  # noqa: E402
import yaml  # noqa: E402

PHASES = ("save", "rotation", "set-aside", "elsewhere")
WORLD = {"single": 1, "ddp": 2, "fsdp": 2}
# a small run: 24 samples, micro batch 2, 2 epochs, 3 saves per epoch (single: 24 steps, 6 saves; 2 ranks: 12 steps)
CASE = {"samples": 24, "micro_batch": 2, "grad_accum": 1, "saves_per_epoch": 3, "num_epochs": 2}
LIMITS = (2, 0, 3)  # cases cycle through these: rotation with 2 and 3, keep-all with 0
PLAN = re.compile(r"\[axolotl_savefix\] INFO: plan: .*?saves at (.+?), keeps")
SAVED = re.compile(r"\[save_log\] saved checkpoint to \S*checkpoint-(\d+)")


class ChaosFailure(AssertionError):
    pass


# --- checks, independent of axolotl_savefix ---------------------------------------------------------


def loadable(folder: Path, step: int, engine: str) -> list[str]:
    """What is wrong with ``folder`` as checkpoint ``step``, found by loading it; empty when it loads."""
    import safetensors
    import torch

    problems = []
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
        if state.get("global_step") != step:
            problems.append(f"trainer_state.json global_step {state.get('global_step')}")
    except (OSError, ValueError) as exc:
        problems.append(f"trainer_state.json: {exc}")
    world = WORLD[engine]
    rng = [f"rng_state_{r}.pth" for r in range(world)] if world > 1 else ["rng_state.pth"]
    torch_files = ["scheduler.pt", *rng]
    if engine == "fsdp":
        for sharded in ("pytorch_model_fsdp_0", "optimizer_0"):
            problems += _sharded_loadable(folder / sharded)
    else:
        torch_files.append("optimizer.pt")
        try:
            with safetensors.safe_open(str(folder / "model.safetensors"), "pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
            problems.append(f"model.safetensors: {type(exc).__name__}: {exc}")
    for name in torch_files:
        try:
            torch.load(folder / name, weights_only=False, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
    return problems


def _sharded_loadable(folder: Path) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    if not (folder / ".metadata").is_file():
        return [f"{folder.name}/.metadata missing"]
    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as exc:  # noqa: BLE001
        return [f"{folder.name}/.metadata: {type(exc).__name__}: {exc}"]
    problems = []
    for info in (metadata.storage_data or {}).values():
        shard = folder / info.relative_path
        if not shard.is_file() or shard.stat().st_size < info.offset + info.length:
            problems.append(f"{folder.name}/{info.relative_path} missing or short")
    return problems


def step_of(name: str, prefix: str = "checkpoint-") -> int | None:
    tail = name[len(prefix) :].split(".")[0] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


@dataclass
class Snapshot:
    complete: list[int]
    incomplete: list[int]
    set_aside: list[str]

    @property
    def newest_complete(self) -> int:
        return max(self.complete, default=0)


def scan(out: Path, engine: str) -> Snapshot:
    complete, incomplete = [], []
    for p in sorted(out.glob("checkpoint-*")) if out.is_dir() else []:
        step = step_of(p.name)
        if step is not None and p.is_dir():
            (incomplete if loadable(p, step, engine) else complete).append(step)
    set_aside = sorted(p.name for p in out.glob("incomplete-*")) if out.is_dir() else []
    return Snapshot(sorted(complete), sorted(incomplete), set_aside)


# --- one run -------------------------------------------------------------------------------------------


@dataclass
class Kill:
    kind: str  # "timer" or the shim's phase
    spec: str  # SAVEFIX_CHAOS_KILL, or the delay in seconds
    phase: str = "none"  # where it landed; "none": it did not land (the run completed first)
    detail: str = ""


@dataclass
class Case:
    engine: str
    limit: int
    workdir: Path
    expected: list[int]
    stock: bool = False  # stock Axolotl (no plugin): its outcome is recorded, not asserted
    runs: list[dict] = field(default_factory=list)
    outcome: str = ""


def expected_saves(engine: str, stock: bool = False) -> list[int]:
    world = WORLD[engine]
    L = CASE["samples"] // (CASE["micro_batch"] * world)
    G, k, epochs = CASE["grad_accum"], CASE["saves_per_epoch"], CASE["num_epochs"]
    M = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], G, epochs, world)
    return reference.stock_saves(L, G, k, epochs, M) if stock else reference.patched_saves(L, G, k, M)


FSDP = harness.FSDP2


def write_config(engine: str, limit: int, workdir: Path, stock: bool = False) -> Path:
    import cases

    case = {**cases.BASE, **CASE, "save_total_limit": limit, "name": workdir.name}
    config = harness.write_config(case, workdir, plugin=not stock)
    cfg = yaml.safe_load(config.read_text())
    shims = {"single": [], "ddp": ["cpu_ddp_shim.CpuDdpShim"], "fsdp": ["cpu_fsdp_shim.CpuFsdpShim"]}[engine]
    cfg["plugins"] = [*shims, "chaos_shim.ChaosShim", "save_log.SaveLog", *(cfg.get("plugins") or [])]
    cfg["auto_resume_from_checkpoints"] = True
    if engine == "fsdp":
        cfg.update(FSDP)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def command(engine: str, config: Path) -> list[str]:
    if engine == "single":
        return [str(Path(sys.executable).parent / "axolotl"), "train", str(config)]
    return harness.torchrun(config, WORLD[engine])


def _trace_lines(trace_dir: Path) -> dict[int, list[list[str]]]:
    lines = {}
    for f in trace_dir.glob("trace-*.log"):
        rank = int(f.stem.split("-")[1])
        lines[rank] = [line.split(" ", 3) for line in f.read_text().splitlines() if line.count(" ") >= 2]
    return lines


def landed_phase(trace_dir: Path) -> tuple[str, str]:
    """Where the run died: the shim's KILL line, else the innermost window any rank had open, else elsewhere."""
    traces = _trace_lines(trace_dir)
    for rank, lines in traces.items():
        for parts in lines:
            if parts[1] == "KILL":
                return parts[2], f"rank {rank}: {parts[3] if len(parts) > 3 else ''}"
    for rank in sorted(traces):
        open_windows: list[tuple[str, str]] = []
        for parts in traces[rank]:
            detail = parts[3] if len(parts) > 3 else ""
            if parts[1] == "enter":
                open_windows.append((parts[2], detail))
            elif parts[1] == "exit" and open_windows:
                open_windows.pop()
        if open_windows:
            return open_windows[-1][0], f"rank {rank}: inside {open_windows[-1][1]}"
    return "elsewhere", ""


def run_once(case: Case, config: Path, n: int, kill: Kill | None, timeout: float, timer: float | None) -> dict:
    """One ``axolotl train`` of the case; killed by the shim or by the timer as ``kill`` says."""
    trace_dir = case.workdir / f"trace-{n}"
    trace_dir.mkdir()
    env = {
        **os.environ,
        **harness.OFFLINE,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(HERE),
        "SAVEFIX_CHAOS_TRACE": str(trace_dir),
        "ACCELERATE_USE_CPU": "true",
    }
    env.pop("SAVEFIX_CHAOS_KILL", None)
    if kill is not None and kill.kind != "timer":
        env["SAVEFIX_CHAOS_KILL"] = kill.spec
    log_path = case.workdir / f"run-{n}.log"
    start = time.monotonic()
    (trace_dir / "started").write_text(f"{time.time():.3f}")
    if forked(case.engine):
        returncode, hung = _run_forked(config, env, log_path, timer, timeout)
    else:
        returncode, hung = _run_spawned(case.engine, config, env, log_path, timer, timeout, start)
    wall = time.monotonic() - start
    text = log_path.read_text()
    save_log = harness.output_dir(config) / "save_log.txt"
    saved = [int(s) for s in SAVED.findall(save_log.read_text())] if save_log.is_file() else []
    result = {"run": n, "rc": returncode, "wall_s": round(wall, 1), "saved": saved, "plans": PLAN.findall(text)}
    if hung:
        raise ChaosFailure(f"run {n} of {case.workdir.name} hung: no exit within {timeout:.0f} s; log {log_path}")
    if kill is not None:
        kill.phase, kill.detail = ("none", "") if returncode == 0 else landed_phase(trace_dir)
        result["kill"] = {"kind": kill.kind, "spec": kill.spec, "phase": kill.phase, "detail": kill.detail}
    if save_log.is_file():  # each run starts its own list (save_log.py clears it at train begin)
        save_log.unlink()
    result["calls"] = {rank: _calls(lines) for rank, lines in _trace_lines(trace_dir).items()}
    return result


def forked(engine: str) -> bool:
    """One process: forked from the harness' fork server (Axolotl imported once, tests/e2e/zygote.py)
    unless ``SAVEFIX_HARNESS_FORK=0``; torchrun's ranks are spawned."""
    return engine == "single" and os.environ.get("SAVEFIX_HARNESS_FORK", "1") != "0"


def _run_forked(config: Path, env: dict, log_path: Path, timer: float | None, timeout: float) -> tuple[int, bool]:
    """``python -m axolotl.cli.train CONFIG`` in a forked child (its own process group); the timer SIGKILLs the group."""
    import zygote

    base_env = {**os.environ, **harness.OFFLINE, "PATH": env["PATH"]}
    try:
        code = zygote.zygote().run(
            ["axolotl.cli.train", str(config)], base_env, env, log_path, timer if timer is not None else timeout, [str(HERE)]
        )
    except subprocess.TimeoutExpired:  # the group was SIGKILLed: by the timer, or a hang
        return -signal.SIGKILL, timer is None
    return code, False


def _run_spawned(
    engine: str, config: Path, env: dict, log_path: Path, timer: float | None, timeout: float, start: float
) -> tuple[int, bool]:
    """``axolotl train`` or torchrun in a new session; the timer SIGKILLs the whole group (every rank and torchrun)."""
    hung = False
    with log_path.open("w") as log:
        proc = subprocess.Popen(command(engine, config), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timer if timer is not None else timeout)
        except subprocess.TimeoutExpired:
            if timer is None:
                hung = True
            _killpg(proc)
            try:
                proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                hung = True
        _killpg(proc)  # whatever a rank left behind
        proc.wait()
    return proc.returncode, hung


def _calls(lines: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for parts in lines:
        if parts[1] == "call":
            counts[parts[2]] = counts.get(parts[2], 0) + 1
    return counts


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- choosing kills ------------------------------------------------------------------------------------


@dataclass
class Calibration:
    wall_s: float  # one clean run, seconds
    train_from_s: float  # when, in that run, Axolotl's train() began (the resume scan): imports and data before it
    save_calls: dict[int, int]  # hooked save calls per rank in a whole clean run
    saves: int


def choose_kill(
    rng: random.Random, engine: str, cal: Calibration, snap: Snapshot, expected: list[int], limit: int, stock: bool = False
) -> Kill:
    remaining = [s for s in expected if s > snap.newest_complete]
    options = ["timer", "save", "save"]
    if limit and len(remaining) + len(snap.complete) > limit:
        options.append("rotation")
    if not stock and (snap.incomplete or len(snap.set_aside) > 1):
        options += ["set-aside", "set-aside"]
    kind = rng.choice(options)
    if kind == "timer":  # half uniform over the whole wall time, half over the part after the imports
        low = 0.0 if rng.random() < 0.5 else cal.train_from_s
        return Kill("timer", f"{rng.uniform(low, cal.wall_s):.2f}")
    seed = rng.randrange(1 << 30)
    if kind == "save":
        rank = rng.randrange(WORLD[engine])
        per_save = cal.save_calls.get(rank, 1) / cal.saves
        calls = max(1, math.ceil(per_save * (len(remaining) + 1)))  # the final model save too
        mode = rng.choice(["before", "cut", "cut", "after"])
        return Kill("save", f"save:{rng.randint(1, calls)}:{mode}:{rank}:{seed}")
    if kind == "rotation":
        calls = max(1, len(remaining) + len(snap.complete) - limit)
        mode = rng.choice(["before", "cut", "cut", "after"])
        return Kill("rotation", f"rotation:{rng.randint(1, calls)}:{mode}:0:{seed}")
    calls = len(snap.incomplete) + max(0, len(snap.set_aside))
    mode = rng.choice(["before", "cut", "after"])
    return Kill("set-aside", f"set-aside:{rng.randint(1, max(1, calls))}:{mode}:0:{seed}")


# --- a case: kills until it completes, then the checks -------------------------------------------------


def run_case(
    case: Case, rng: random.Random, kills: int, cal: Calibration | None, timeout: float, log, forced: list[str] | None = None
) -> None:
    """Kill, rerun, until a run completes; then check. ``forced``: these shim kills (``SAVEFIX_CHAOS_KILL``), in order."""
    config = write_config(case.engine, case.limit, case.workdir, case.stock)
    out = harness.output_dir(config)
    snapshots: list[Snapshot] = []
    cap = kills + 4
    for n in range(cap + 1):
        snap = scan(out, case.engine)
        snapshots.append(snap)
        planned = sum(1 for r in case.runs if "kill" in r and r["kill"]["phase"] != "none")
        if forced is not None:
            kill = Kill(forced[n].split(":")[0], forced[n]) if n < len(forced) else None
        else:
            assert cal is not None
            kill = choose_kill(rng, case.engine, cal, snap, case.expected, case.limit, case.stock) if planned < kills else None
        timer = float(kill.spec) if kill and kill.kind == "timer" else None
        result = run_once(case, config, n, kill, timeout, timer)
        case.runs.append(result)
        log(f"  {case.workdir.name} run {n}: rc {result['rc']} {result['wall_s']} s" + (
            f", kill {kill.kind} {kill.spec} -> {kill.phase} {kill.detail}" if kill else ""))  # fmt: skip
        if result["rc"] == 0:
            failures = check_case(case, out, snapshots + [scan(out, case.engine)])
            case.outcome = "completed" + (": " + "; ".join(failures) if failures else ", exact")
            if failures and not case.stock:
                raise ChaosFailure(f"{case.workdir} ({case.engine}, save_total_limit {case.limit}):\n  " + "\n  ".join(failures))
            return
        if kill is None:
            text = (case.workdir / f"run-{n}.log").read_text()
            errors = [line for line in text.splitlines() if re.match(r"\w*(Error|Exception)\b", line)]
            case.outcome = f"run {n}, with no kill, failed (rc {result['rc']}): {errors[-1] if errors else text[-300:]}"
            if case.stock:
                return
            raise ChaosFailure(f"{case.workdir.name} run {n} failed with no kill (rc {result['rc']}):\n{text[-3000:]}")
    case.outcome = f"not complete after {cap} restarts"
    if not case.stock:
        raise ChaosFailure(f"{case.workdir.name}: not complete after {cap} restarts")


def check_case(case: Case, out: Path, snapshots: list[Snapshot]) -> list[str]:
    """What is wrong with the run's end state, against the reference schedule, the limit and the set-aside policy."""
    failures = []
    expected = case.expected
    ever = sorted({s for snap in snapshots for s in snap.complete + snap.incomplete})
    stray = [s for s in ever if s not in expected]
    if stray:
        failures.append(f"checkpoint-N folders at steps off the schedule {expected}: {stray}")
    saved = {s for r in case.runs for s in r["saved"]} | {s for snap in snapshots for s in snap.complete}
    if set(expected) - saved:
        failures.append(f"never saved: {sorted(set(expected) - saved)}")
    final = snapshots[-1]
    kept_now = sorted(step_of(p.name) for p in out.glob("checkpoint-*"))
    want = reference.kept(expected, reference.stock_limit(case.limit) if case.stock else case.limit)
    if kept_now != want:
        failures.append(f"kept {kept_now}, the reference keeps {want} (save_total_limit {case.limit})")
    for step in final.incomplete:
        failures.append(f"checkpoint-{step} is not loadable: {loadable(out / f'checkpoint-{step}', step, case.engine)}")
    if len(final.set_aside) > 1:
        failures.append(f"{len(final.set_aside)} set-aside folders, the policy keeps at most one: {final.set_aside}")
    allowed = {s for snap in snapshots[:-1] for s in snap.incomplete if s > snap.newest_complete}
    for name in final.set_aside:
        step = step_of(name, "incomplete-checkpoint-")
        if step not in allowed:
            failures.append(f"{name} kept: it was not newer than the newest complete checkpoint (policy: delete it)")
    if case.stock:
        return failures
    whole = f"{' '.join(map(str, expected))} ({len(expected)})"
    for r in case.runs:
        if any(p != whole for p in r["plans"]):
            failures.append(f"run {r['run']} logged the plan 'saves at {r['plans']}', the whole run's is '{whole}'")
    last = case.runs[-1]
    if not last["plans"]:
        failures.append("the completing run logged no plan")
    if case.engine != "fsdp" and not (out / "model.safetensors").is_file():
        failures.append("no final model.safetensors in output_dir")
    return failures


# --- the session ---------------------------------------------------------------------------------------


def calibrate(engine: str, root: Path, timeout: float, log) -> Calibration:
    """One clean run: its wall time (the timer's range) and how many hooked save calls each rank makes."""
    case = Case(engine, LIMITS[0], root / f"{engine}-clean", expected_saves(engine))
    config = write_config(engine, case.limit, case.workdir)
    if forked(engine):  # the fork server's imports are not part of a run's wall time
        import zygote

        zygote.zygote().start({**os.environ, **harness.OFFLINE})
    result = run_once(case, config, 0, None, timeout, None)
    case.runs.append(result)
    if result["rc"] != 0:
        raise ChaosFailure(f"{engine}: the clean run failed:\n{(case.workdir / 'run-0.log').read_text()[-3000:]}")
    failures = check_case(case, harness.output_dir(config), [scan(harness.output_dir(config), engine)])
    if failures:
        raise ChaosFailure(f"{engine}: the clean run: " + "; ".join(failures))
    saves = {int(rank): calls.get("save", 0) for rank, calls in result["calls"].items()}
    log(f"{engine}: clean run {result['wall_s']} s, hooked save calls per rank {saves}")
    trace = case.workdir / "trace-0"
    began = min(float(parts[0]) for parts in _trace_lines(trace)[0] if parts[1] == "enter")
    train_from = began - float((trace / "started").read_text())
    log(f"{engine}: Axolotl's train() began {train_from:.1f} s into the clean run")
    return Calibration(result["wall_s"], round(train_from, 1), saves, len(case.expected) + 1)


def chaos(seed: int, kills: int, engines: list[str], root: Path, timeout: float, log=print, stock: bool = False) -> dict:
    """``kills`` kills per engine (as many cases as it takes); returns the summary; raises ChaosFailure.

    ``engines``: names, each optionally ``NAME:N`` for N kills in that engine instead of ``kills``.

    ``stock``: then one case of stock Axolotl per engine (no plugin, ``save_total_limit`` 2) under the
    same kind of kills; its outcome is recorded in the summary, not asserted.
    """
    named = ",".join(engines)
    log(f"chaos: seed {seed}, {kills} kills per engine, engines {named} (replay: --seed {seed} --kills {kills} --engines {named})")
    counts = {name: int(n) if n else kills for name, _, n in (e.partition(":") for e in engines)}
    summary: dict = {"seed": seed, "kills_per_engine": kills, "engines": {}, "phases": dict.fromkeys(PHASES, 0)}
    started = time.monotonic()
    for engine, engine_kills in counts.items():
        t0 = time.monotonic()
        rng = random.Random(f"{seed}:{engine}")
        cal = calibrate(engine, root, timeout, log)
        calibration_s = time.monotonic() - t0
        phases = dict.fromkeys(PHASES, 0)
        landed = missed = restarts = 0
        number = 0
        while landed < engine_kills:
            limit = LIMITS[number % len(LIMITS)]
            case = Case(engine, limit, root / f"{engine}-{number}-limit{limit}", expected_saves(engine))
            try:
                run_case(case, rng, engine_kills - landed, cal, timeout, log)
            finally:
                for r in case.runs:
                    if "kill" in r:
                        if r["kill"]["phase"] == "none":
                            missed += 1
                        else:
                            landed += 1
                            phases[r["kill"]["phase"]] += 1
                restarts += len(case.runs) - 1
                done = [r["wall_s"] for r in case.runs if r["rc"] == 0]
                if done:  # the timer's range: the shortest complete run seen (a resumed run is shorter than a clean one)
                    cal.wall_s = min(cal.wall_s, *done)
                    cal.train_from_s = min(cal.train_from_s, 0.8 * cal.wall_s)
            number += 1
        chaos_s = time.monotonic() - t0 - calibration_s
        summary["engines"][engine] = {
            "kills": landed,
            "kills_that_did_not_land": missed,
            "cases": number,
            "restarts": restarts,
            "phases": phases,
            "clean_run_s": cal.wall_s,
            "seconds": round(chaos_s, 1),
            "seconds_per_kill": round(chaos_s / max(1, landed), 1),
        }
        for p, v in phases.items():
            summary["phases"][p] += v
        if stock:
            case = Case(engine, LIMITS[0], root / f"{engine}-stock-limit{LIMITS[0]}", expected_saves(engine, True), stock=True)
            t1 = time.monotonic()
            run_case(case, random.Random(f"{seed}:{engine}:stock"), engine_kills, cal, timeout, log)
            summary["engines"][engine]["stock"] = {
                "outcome": case.outcome,
                "kills": [r["kill"] for r in case.runs if "kill" in r],
                "seconds": round(time.monotonic() - t1, 1),
            }
            log(f"{engine}: stock, the same kind of kills: {case.outcome}")
    summary["kills"] = sum(e["kills"] for e in summary["engines"].values())
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SAVEFIX_CHAOS_SEED") or random.randrange(1 << 31)))
    parser.add_argument("--kills", type=int, default=int(os.environ.get("SAVEFIX_CHAOS_KILLS") or 34), help="per engine")
    parser.add_argument("--engines", default=os.environ.get("SAVEFIX_CHAOS_ENGINES") or "single,ddp,fsdp")
    parser.add_argument(
        "--kill",
        action="append",
        help="replay exact shim kills instead (PHASE:N:MODE:RANK:SEED, repeatable, in order) on one case of the first engine",
    )
    parser.add_argument("--limit", type=int, default=LIMITS[0], help="save_total_limit of the --kill case")
    parser.add_argument("--stock", action="store_true", help="also one stock case per engine, its outcome recorded")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take before it counts as a hang")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, default=HERE.parent.parent / ".nox" / "chaos.json")
    args = parser.parse_args(argv)
    import tempfile

    root = args.root or Path(tempfile.mkdtemp(prefix="chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.update(harness.OFFLINE)
    engines = args.engines.split(",")
    if args.kill:
        engine = engines[0].partition(":")[0]
        case = Case(engine, args.limit, root / f"{engine}-replay-limit{args.limit}", expected_saves(engine, args.stock), args.stock)
        try:
            run_case(case, random.Random(0), len(args.kill), None, args.timeout, lambda s: print(s, flush=True), args.kill)
        except ChaosFailure as exc:
            print(f"replay of {args.kill} FAILED:\n{exc}")
            return 1
        print(f"replay of {args.kill}: {case.outcome}")
        return 0
    try:
        summary = chaos(args.seed, args.kills, engines, root, args.timeout, log=lambda s: print(s, flush=True), stock=args.stock)
        summary["failures"] = 0
        code = 0
    except ChaosFailure as exc:
        print(f"chaos FAILED (seed {args.seed}; replay: --seed {args.seed} --kills {args.kills} --engines {args.engines}):\n{exc}")
        summary = {"seed": args.seed, "kills_per_engine": args.kills, "engines": engines, "failures": 1, "failure": str(exc)}
        code = 1
    summary["root"] = str(root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"chaos: summary in {args.out}; seed {args.seed}")
    return code


if __name__ == "__main__":
    sys.exit(main())
