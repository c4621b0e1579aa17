"""Benchmark: what the plugin costs a run.

* whole process: ``axolotl train`` with and without the plugin line, as a user runs
  it (interpreter start, imports, config, training, saves), in pairs after one
  warm-up pair; the order inside a pair alternates (ABBA) so drift cancels; the
  median of the per-pair ratios patched/stock is the number (target: <= 1.01);
* training in one interpreter (``apply()`` vs stock, no process start);
* the per-step cost of the save decision;
* the per-step cost of the preemption agreement (one process; 2-process DDP, gloo).

Prints a table; writes JSON to argv[1] (default bench.json)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import cases  # noqa: E402
import harness  # noqa: E402

import axolotl_savefix  # noqa: E402

REPEATS = 3
PAIRS = 6
TARGET_RATIO = 1.01


def decision_cost_us(calls: int = 200_000) -> dict[str, float]:
    from transformers import TrainerControl
    from transformers.trainer_callback import DefaultFlowCallback

    from axolotl_savefix.save_decision import SavesPerEpochCallback

    args = SimpleNamespace(
        save_strategy="steps",
        logging_strategy="steps",
        logging_steps=1,
        logging_first_step=False,
        eval_strategy="no",
        eval_delay=0,
    )
    state = SimpleNamespace(epoch=0.0, global_step=0, max_steps=10**9, save_steps=0, eval_steps=0, logging_steps=1)
    control = TrainerControl()
    ours, flow = SavesPerEpochCallback(4), DefaultFlowCallback()

    def step(cb):
        state.global_step += 1
        state.epoch = state.global_step / 30
        cb.on_step_end(args, state, control)

    return {
        "savefix_us_per_step": timeit.timeit(lambda: step(ours), number=calls) / calls * 1e6,
        "transformers_flow_us_per_step": timeit.timeit(lambda: step(flow), number=calls) / calls * 1e6,
    }


def _agreement_worker(rank: int, world: int, port: int, calls: int, out: str) -> None:
    import torch.distributed as dist
    from transformers import TrainerControl

    from axolotl_savefix.preemption import PreemptionCallback

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        args = SimpleNamespace(device="cpu", should_save=False, output_dir=tempfile.gettempdir())
        state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=10**9)
        control, callback = TrainerControl(), PreemptionCallback({})
        for _ in range(100):  # warm-up: the flag tensor, gloo's buffers
            callback.on_step_end(args, state, control)
        dist.barrier()
        took = []
        for _ in range(calls):
            start = time.perf_counter()
            callback.on_step_end(args, state, control)
            took.append((time.perf_counter() - start) * 1e6)
        if rank == 0:
            Path(out).write_text(json.dumps({"median": statistics.median(took), "mean": statistics.fmean(took)}))
    finally:
        dist.destroy_process_group()


def preemption_agreement_us(calls: int = 20_000, ddp_calls: int = 500, rounds: int = 2) -> dict[str, Any]:
    """Per optimizer step, what the preemption patch costs when no signal comes (µs).

    Single process: :meth:`PreemptionCallback.on_step_end` (no collective). 2-process DDP (CPU, gloo,
    two local processes): the same call with its one ``all_reduce(MAX)`` of one int32 and its
    ``.item()``, timed per call: the median and the mean of ``rounds`` rounds.
    """
    import torch.multiprocessing as mp
    from transformers import TrainerControl

    from axolotl_savefix.preemption import PreemptionCallback

    args = SimpleNamespace(device="cpu", should_save=False, output_dir=tempfile.gettempdir())
    state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=10**9)
    control, callback = TrainerControl(), PreemptionCallback({})
    single = timeit.timeit(lambda: callback.on_step_end(args, state, control), number=calls) / calls * 1e6
    measured = []
    for _ in range(rounds):
        out = tempfile.mktemp(prefix="savefix-agree-", suffix=".json")
        mp.spawn(_agreement_worker, args=(2, harness.free_port(), ddp_calls, out), nprocs=2, join=True)
        measured.append(json.loads(Path(out).read_text()))
        os.unlink(out)
    return {
        "single_process_us_per_step": single,
        "ddp2_gloo_us_per_step": statistics.median(r["median"] for r in measured),
        "ddp2_gloo_mean_us_per_step": statistics.fmean(r["mean"] for r in measured),
        "ddp2_rounds": measured,
        "load_average_1min": os.getloadavg()[0],
    }


def wall_times(name: str) -> dict[str, float]:
    case = cases.case(name)
    root = Path(tempfile.mkdtemp(prefix="savefix-bench-"))
    times: dict[str, list[float]] = {"stock": [], "patched": []}
    for i in range(REPEATS + 1):  # the first round warms caches (prepared data, imports) and is dropped
        # alternate which goes first: a run right after another is slower here (ABBA cancels it)
        for variant in ("stock", "patched") if i % 2 else ("patched", "stock"):
            if variant == "patched":
                axolotl_savefix.apply()
            config = harness.write_config(case, root / f"{variant}-{i}", plugin=False)
            start = time.perf_counter()
            try:
                harness.run_in_process(config)
            finally:
                axolotl_savefix.revert()
            if i:
                times[variant].append(time.perf_counter() - start)
    stock, patched = statistics.median(times["stock"]), statistics.median(times["patched"])
    return {
        "case": name,
        "repeats": REPEATS,
        "stock_s": stock,
        "patched_s": patched,
        "ratio_patched_over_stock": patched / stock,
        "all": times,
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_costs(name: str = "reported") -> dict:
    """Per save: the save itself, what an atomic publish would add, and what the completeness check costs.

    One patched in-process run with every ``Trainer._save_checkpoint`` timed. Then, for each
    checkpoint it wrote: ``checkpoints.missing`` (the check the ``resume`` patch makes, once per
    checkpoint at a resume), a rename publish (``tmp-checkpoint-N`` -> ``checkpoint-N`` and an
    fsync of the parent folder), and a durable publish (an fsync of every file first, without
    which a machine that loses power can publish a folder of empty files).
    """
    import transformers

    from axolotl_savefix import checkpoints

    original = transformers.Trainer._save_checkpoint
    save_ms: list[float] = []

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            save_ms.append((time.perf_counter() - start) * 1e3)

    root = Path(tempfile.mkdtemp(prefix="savefix-bench-ckpt-"))
    config = harness.write_config(cases.case(name), root / "run", plugin=False)
    transformers.Trainer._save_checkpoint = timed
    axolotl_savefix.apply()
    try:
        observed = harness.run_in_process(config)
    finally:
        axolotl_savefix.revert()
        transformers.Trainer._save_checkpoint = original
    check_ms, rename_ms, durable_ms = [], [], []
    for folder in (observed.output_dir / f"checkpoint-{s}" for s in observed.kept):
        start = time.perf_counter()
        assert checkpoints.missing(folder) == []
        check_ms.append((time.perf_counter() - start) * 1e3)
        staged = folder.with_name("tmp-" + folder.name)
        folder.rename(staged)
        start = time.perf_counter()
        staged.rename(folder)
        _fsync(folder.parent)
        rename_ms.append((time.perf_counter() - start) * 1e3)
        folder.rename(staged)
        start = time.perf_counter()
        for file in staged.rglob("*"):
            if file.is_file():
                _fsync(file)
        staged.rename(folder)
        _fsync(folder.parent)
        durable_ms.append((time.perf_counter() - start) * 1e3)
    save = statistics.median(save_ms)
    first = observed.output_dir / f"checkpoint-{observed.kept[0]}"
    return {
        "case": name,
        "checkpoint_bytes": sum(f.stat().st_size for f in first.rglob("*") if f.is_file()),
        "save_ms_median": save,
        "check_ms_median": statistics.median(check_ms),
        "rename_publish_ms_median": statistics.median(rename_ms),
        "durable_publish_ms_median": statistics.median(durable_ms),
        "check_over_save": statistics.median(check_ms) / save,
        "rename_publish_over_save": statistics.median(rename_ms) / save,
        "durable_publish_over_save": statistics.median(durable_ms) / save,
        "saves": len(save_ms),
    }


def whole_process(name: str, pairs: int = PAIRS) -> dict:
    case = cases.case(name)
    root = Path(tempfile.mkdtemp(prefix="savefix-bench-cli-"))
    ratios, times = [], {"stock": [], "patched": []}
    for i in range(pairs + 1):  # pair 0 warms the prepared data set and the OS caches; dropped
        order = ("stock", "patched") if i % 2 else ("patched", "stock")
        took = {}
        for variant in order:
            config = harness.write_config(case, root / f"{variant}-{i}", plugin=variant == "patched")
            start = time.perf_counter()
            harness.run_cli(config, forked=False)  # whole processes, as a user runs them
            took[variant] = time.perf_counter() - start
        if i:
            ratios.append(took["patched"] / took["stock"])
            for variant, seconds in took.items():
                times[variant].append(seconds)
    return {
        "case": name,
        "pairs": pairs,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "stock_median_s": statistics.median(times["stock"]),
        "patched_median_s": statistics.median(times["patched"]),
        "ratios": ratios,
        "all": times,
        "target_ratio": TARGET_RATIO,
    }


def main() -> None:
    if sys.argv[1:2] == ["preemption"]:  # just the preemption agreement: seconds, not the whole bench
        p = preemption_agreement_us()
        print(json.dumps(p, indent=2))
        return
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
    result = {
        "preemption": preemption_agreement_us(),
        "decision": decision_cost_us(),
        "checkpoint": checkpoint_costs("reported"),
        "process": whole_process("reported"),
        "train": wall_times("reported"),
    }
    d, t, w, c = result["decision"], result["train"], result["process"], result["checkpoint"]
    print(f"\n{'measure':<46} {'value':>10}")
    print(f"{'save decision, axolotl_savefix (us/step)':<46} {d['savefix_us_per_step']:>10.2f}")
    print(f"{'DefaultFlowCallback, transformers (us/step)':<46} {d['transformers_flow_us_per_step']:>10.2f}")
    p = result["preemption"]
    print(f"{'preemption agreement, 1 process (us/step)':<46} {p['single_process_us_per_step']:>10.2f}")
    print(f"{'preemption agreement, 2-process DDP (us/step)':<46} {p['ddp2_gloo_us_per_step']:>10.2f}")
    print(f"{'train wall time, stock (s, median of ' + str(REPEATS) + ')':<46} {t['stock_s']:>10.2f}")
    print(f"{'train wall time, patched (s, median of ' + str(REPEATS) + ')':<46} {t['patched_s']:>10.2f}")
    print(f"{'ratio patched / stock':<46} {t['ratio_patched_over_stock']:>10.3f}")
    print(f"{'axolotl train process, stock (s, median)':<46} {w['stock_median_s']:>10.2f}")
    print(f"{'axolotl train process, patched (s, median)':<46} {w['patched_median_s']:>10.2f}")
    print(
        f"{'process ratio patched / stock, median of ' + str(w['pairs']) + ' pairs':<46} {w['ratio_median']:>10.3f}"
        f"  (min {w['ratio_min']:.3f}, max {w['ratio_max']:.3f}; target <= {TARGET_RATIO})"
    )
    print("(patched saves 8 checkpoints and keeps 8; stock saves 8 and keeps 4)")
    rows = [
        ("one save, Trainer._save_checkpoint (ms)", c["save_ms_median"], None),
        ("completeness check at resume (ms/checkpoint)", c["check_ms_median"], c["check_over_save"]),
        ("rename publish (ms/save)", c["rename_publish_ms_median"], c["rename_publish_over_save"]),
        ("durable publish, fsync + rename (ms/save)", c["durable_publish_ms_median"], c["durable_publish_over_save"]),
    ]
    for label, ms, share in rows:
        print(f"{label:<46} {ms:>10.3f}" + (f"  ({share:.3f} of a save)" if share is not None else ""))
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
