"""A run killed while it writes a checkpoint: the same command again resumes by itself and loses nothing.

Each run is a fresh ``axolotl train`` process. The first is killed by a real
SIGKILL at an exact point of the save of the third checkpoint (tests/e2e/kill_shim.py:
the kill lands where it says, no sleep); the second is the same command, with
``auto_resume_from_checkpoints: true`` in the config all along. Stock Axolotl is
run the same way, and its failure is what the harness records.
"""

import json
import re

import cases
import harness
import pytest
import reference
import safetensors
import torch
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.preemption]

HERE = harness.Path(__file__).parent
ENV = {"PYTHONPATH": str(HERE)}  # kill_shim.py, cpu_ddp_shim.py
CASE = cases.case("reported")  # 30 steps per epoch, 4 saves per epoch, 2 epochs: 8 15 23 30 38 45 53 60
WARNING = re.compile(r"\[axolotl_savefix\] WARNING: (checkpoint-\d+ is incomplete.*)")


def _expected(world: int = 1, *, stock: bool = False) -> list[int]:
    L = CASE["samples"] // (CASE["micro_batch"] * world)
    G, k, epochs = CASE["grad_accum"], CASE["saves_per_epoch"], CASE["num_epochs"]
    M = reference.axolotl_max_steps(CASE["samples"], CASE["micro_batch"], G, epochs, world)
    return reference.stock_saves(L, G, k, epochs, M) if stock else reference.patched_saves(L, G, k, M)


def _config(root, name, *, plugin, ddp=False):
    config = harness.write_config(CASE, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    shims = ["cpu_ddp_shim.CpuDdpShim"] if ddp else []
    cfg["plugins"] = [*shims, "kill_shim.KillShim", *(cfg.get("plugins") or [])]
    cfg["auto_resume_from_checkpoints"] = True
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def assert_complete(folder, step, world=1):
    """Resumable, checked by loading, independently of axolotl_savefix.rules.checkpoints."""
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == step
    with safetensors.safe_open(str(folder / "model.safetensors"), "pt") as f:
        for key in f.keys():
            f.get_tensor(key)
    rng = [f"rng_state_{r}.pth" for r in range(world)] if world > 1 else ["rng_state.pth"]
    for name in ("optimizer.pt", "scheduler.pt", *rng):
        torch.load(folder / name, weights_only=False)


POINTS = ["weights", "optimizer", "before_state", "after_state"]


@pytest.mark.parametrize("point", POINTS)
def test_killed_mid_save_the_same_command_resumes_and_ends_with_the_exact_schedule(point, e2e_root):
    expected = _expected()
    cut = expected[2]
    config = _config(e2e_root, f"preempt-{point}", plugin=True)
    out = harness.output_dir(config)

    code, first = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{cut}:{point}"}, log_name="first.log")
    assert code != 0 and "[kill_shim] SIGKILL" in first and f"checkpoint-{cut}" in first
    assert (out / f"checkpoint-{cut}").is_dir()
    complete = point == "after_state"  # killed after trainer_state.json: that checkpoint is whole
    assert (out / f"checkpoint-{cut}" / "trainer_state.json").is_file() == complete

    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-4000:]
    observed = harness.observe(out, second)
    resumed_from = cut if complete else expected[1]
    assert f"resume from checkpoint at {out / f'checkpoint-{resumed_from}'}" in second
    assert observed.saved == [s for s in expected if s > resumed_from]  # the cut target again, nothing twice
    assert observed.kept == expected
    for step in observed.kept:
        assert_complete(out / f"checkpoint-{step}", step)
    # the plan logged at the resumed run's start is the whole run's schedule, as the guard saved it
    assert f"saves at {' '.join(map(str, expected))} ({len(expected)})" in second
    warnings = WARNING.findall(second)
    if complete:
        assert warnings == [] and not list(out.glob("incomplete-*"))
    else:
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"checkpoint-{cut} is incomplete: it lacks ")
        assert f"resuming from checkpoint-{resumed_from}" in warnings[0]
        assert (out / f"incomplete-checkpoint-{cut}").is_dir()


# what stock's resume dies of, per kill point (its first error on the broken folder)
STOCK_ERRORS = {
    "weights": "SafetensorError: Error while deserializing header",  # the cut model.safetensors
    "optimizer": "No such file or directory",  # .../trainer_state.json
    "before_state": "No such file or directory",
}


@pytest.mark.parametrize("point", list(STOCK_ERRORS))
def test_stock_cannot_resume_after_a_kill_mid_save(point, e2e_root):
    """The defect, recorded: stock resumes from the broken folder and fails at once."""
    cut = _expected(stock=True)[2]  # stock's own third save (it saves at other steps)
    config = _config(e2e_root, f"preempt-stock-{point}", plugin=False)
    code, _ = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_KILL_AT": f"{cut}:{point}"}, log_name="first.log")
    assert code != 0
    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code != 0
    assert f"resume from checkpoint at {harness.output_dir(config) / f'checkpoint-{cut}'}" in second
    error = next(line for line in second.splitlines() if STOCK_ERRORS[point] in line)
    if point != "weights":
        assert f"checkpoint-{cut}/trainer_state.json" in error


def test_ddp_one_rank_killed_mid_save_resumes(e2e_root):
    """2 processes (CPU, gloo): rank 1 dies while writing its RNG state; rank 0 may well finish the folder."""
    world = 2
    expected = _expected(world)
    cut = expected[2]
    config = _config(e2e_root, "preempt-ddp", plugin=True, ddp=True)
    out = harness.output_dir(config)
    launch = harness.torchrun(config, world)
    env = {**ENV, "ACCELERATE_USE_CPU": "true"}

    code, first = harness.run_cli_raw(config, launcher=launch, env={**env, "SAVEFIX_KILL_AT": f"{cut}:rng:1"}, log_name="first.log")
    assert code != 0 and f"[kill_shim] SIGKILL while writing checkpoint-{cut}/rng_state_1.pth (rank 1)" in first

    code, second = harness.run_cli_raw(config, launcher=launch, env=env, log_name="second.log")
    assert code == 0, second[-4000:]
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in expected if s > expected[1]]
    assert observed.kept == expected
    for step in observed.kept:
        assert_complete(out / f"checkpoint-{step}", step, world)
    warnings = WARNING.findall(second)
    # what else rank 0 had written when torchrun stopped it varies; that the folder was set aside does not
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint-{cut} is incomplete: it lacks ")
    assert (out / f"incomplete-checkpoint-{cut}").is_dir()
