"""DeepSpeed ZeRO-2 and ZeRO-3 (Axolotl's own deepspeed_configs/) over 2 processes, stock vs patched.

On a machine without a GPU the runs go through torchrun with the test-only shim
tests/e2e/cpu_deepspeed_shim.py (gloo; see its docstring for why accelerate believed the world
size was 1 there, and the bend). That each run really was a distributed DeepSpeed run is
checked from what it wrote, not from the shim:

- each rank walked its share of the data: Transformers' epoch at step 1 gives L = 15 batches
  per epoch per rank (60 rows, micro batch 2, 2 ranks), the 2-process DDP run's L
  (tests/e2e/test_ddp.py); a rank that walked all the data would give 30;
- the optimizer steps per epoch: the step whose logged epoch is 1.0 in trainer_state.json,
  and DeepSpeed's own step counter (``global_steps``) and data-parallel world size
  (``dp_world_size``) in the model states file of the checkpoint at that step;
- the ZeRO layout: ``checkpoint-N/global_stepN/`` with one optimizer shard per rank
  (``zero_pp_rank_R_mp_rank_00_optim_states.pt``), ``latest`` naming ``global_stepN``, and
  ``zero_to_fp32.py``.

Needs the deepspeed package (``nox -s deepspeed`` builds an environment with it) and
``SAVEFIX_DEEPSPEED_CONFIGS`` (Axolotl's deepspeed_configs/, which that session sets); skips,
saying which is missing, elsewhere. On a GPU machine the shim changes nothing and the same
cases run on CUDA. Expected steps come from tests/reference.py with L per rank.
"""

import importlib.util
import json
import os
import re

import cases
import harness
import pytest
import reference
import torch
import yaml
from test_engines import assert_exact_saves

pytestmark = [pytest.mark.e2e, pytest.mark.deepspeed]

HERE = harness.Path(__file__).parent
WORLD = 2
ENGINES = ["zero2", "zero3"]


def _configs() -> harness.Path:
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs the deepspeed package in the Axolotl environment (nox -s deepspeed builds one)")
    folder = os.environ.get("SAVEFIX_DEEPSPEED_CONFIGS")
    if not folder:
        pytest.skip("needs SAVEFIX_DEEPSPEED_CONFIGS: Axolotl's deepspeed_configs/ folder (nox -s deepspeed sets it)")
    return harness.Path(folder)


def _config(root, name, engine, *, plugin, **extra):
    case = cases.case("reported")
    device = "cuda-bf16" if torch.cuda.is_available() else "cpu"
    config = harness.write_config(case, root / name, plugin=plugin, device=device)
    cfg = yaml.safe_load(config.read_text())
    cfg.update(deepspeed=str(_configs() / f"{engine}.json"), **extra)
    # saved steps: Transformers logs "Saving model checkpoint to" for DeepSpeed's saves (no save_log.py)
    cfg["plugins"] = ["cpu_deepspeed_shim.CpuDeepSpeedShim", *(cfg.get("plugins") or [])]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return case, config


# DS_ACCELERATOR: DeepSpeed's CPU accelerator where there is no GPU (gloo). ACCELERATE_USE_CPU stays
# unset: with it accelerate ignores DeepSpeed altogether (../shared/ENGINES.md).
ENV = {"PYTHONPATH": str(HERE), **({} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"})}


def _torchrun(config, **env):
    return harness.run_cli_raw(config, launcher=harness.torchrun(config, WORLD), env={**ENV, **env})


def _run(config):
    code, log = _torchrun(config)
    if code != 0:
        raise AssertionError(f"torchrun {config} failed ({code}):\n{log[-4000:]}")
    return harness.observe(harness.output_dir(config), log)


def _shape(case):
    L = case["samples"] // (case["micro_batch"] * WORLD)  # batches per epoch, per rank: the DDP run's
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"], WORLD)
    return L, M


def assert_really_zero(folder, stage):
    """DeepSpeed's layout: global_stepN/ with a ZeRO optimizer shard per rank, `latest`, zero_to_fp32.py."""
    step = int(folder.name.split("-")[1])
    tag = folder / f"global_step{step}"
    assert tag.is_dir(), sorted(p.name for p in folder.iterdir())
    assert (folder / "latest").read_text().strip() == tag.name
    assert (folder / "zero_to_fp32.py").is_file()
    shards = sorted(p.name for p in tag.glob("*_optim_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(WORLD)]
    assert "optimizer.pt" not in {p.name for p in folder.iterdir()}
    assert {f"rng_state_{r}.pth" for r in range(WORLD)} <= {p.name for p in folder.iterdir()}
    states = torch.load(_model_states(tag), map_location="cpu", weights_only=False)
    assert states["ds_config"]["zero_optimization"]["stage"] == stage
    return states


def _model_states(tag):
    """ZeRO-2 writes mp_rank_00_model_states.pt; ZeRO-3 one zero_pp_rank_R_mp_rank_00_model_states.pt per rank."""
    found = sorted(tag.glob("*model_states.pt"))
    assert found, sorted(p.name for p in tag.iterdir())
    return found[0]


def assert_steps_per_epoch(observed, folder_of, L, G, stage):
    """Optimizer steps per epoch, read from the run: Transformers' log and DeepSpeed's own counter."""
    assert observed.batches_per_epoch(G) == L  # each rank walked L batches per epoch, not all 2L
    epoch_end = [e["step"] for e in observed.log_history if "loss" in e and e.get("epoch") == 1.0]
    assert epoch_end == [L // G], epoch_end
    states = assert_really_zero(folder_of(L // G), stage)
    assert states["global_steps"] == L // G  # DeepSpeed's own count of optimizer steps at the end of epoch 1
    assert states["dp_world_size"] == WORLD


@pytest.mark.parametrize("variant", ["stock", "patched"])
@pytest.mark.parametrize("engine", ENGINES)
def test_zero_exact_saves_and_a_faithful_two_process_run(engine, variant, e2e_root):
    case, config = _config(e2e_root, f"ds-{engine}-{variant}", engine, plugin=variant == "patched")
    observed = _run(config)
    L, M = _shape(case)
    assert observed.max_steps == M
    assert_exact_saves(observed, case, variant, L, M)
    stage = int(engine[-1])
    for step in observed.kept:
        assert_really_zero(observed.output_dir / f"checkpoint-{step}", stage)
    if variant == "patched":  # every save kept: the end of epoch 1 (step L) is among them
        assert_steps_per_epoch(observed, lambda s: observed.output_dir / f"checkpoint-{s}", L, case["grad_accum"], stage)
        # the disk rule's measurement (limit unset: one line) is taken after every rank wrote
        log = (config.parent / "train.log").read_text()
        measured = re.findall(r"\[axolotl_savefix\] INFO: measured checkpoint-(\d+): (\d+) bytes", log)
        assert len(measured) == 1, measured
        step, size = int(measured[0][0]), int(measured[0][1])
        folder = observed.output_dir / f"checkpoint-{step}"
        assert size == harness.du_bytes(folder)  # allocated on disk, as the free space is counted


@pytest.mark.parametrize("engine", ENGINES)
def test_zero_killed_after_a_mid_epoch_checkpoint_the_same_command_resumes(engine, e2e_root):
    """Rank 0 SIGKILLed right after checkpoint-K's trainer_state.json (K mid-epoch 1); the same command resumes from K."""
    case, config = _config(e2e_root, f"ds-{engine}-resume", engine, plugin=True, auto_resume_from_checkpoints=True)
    cfg = yaml.safe_load(config.read_text())
    cfg["plugins"] = ["kill_shim.KillShim", *cfg["plugins"]]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    L, M = _shape(case)
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    cut = expected[1]  # half way through epoch 1
    out = harness.output_dir(config)

    code, first = _torchrun(config, SAVEFIX_KILL_AT=f"{cut}:after_state:0")
    assert code != 0 and "[kill_shim] SIGKILL" in first, first[-4000:]
    assert harness.observe(out, first).kept == [s for s in expected if s <= cut]
    assert 0 < json.loads((out / f"checkpoint-{cut}" / "trainer_state.json").read_text())["epoch"] < 1

    code, second = _torchrun(config)
    assert code == 0, second[-4000:]
    assert f"resume from checkpoint at {out / f'checkpoint-{cut}'}" in second
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in expected if s > cut]  # nothing saved twice, nothing lost
    assert observed.kept == expected
    stage = int(engine[-1])
    for step in observed.kept:
        assert_really_zero(out / f"checkpoint-{step}", stage)
    # the resumed run still walks its share: epoch 1 ends at step L, DeepSpeed's own counter there says L
    assert_steps_per_epoch(observed, lambda s: out / f"checkpoint-{s}", L, case["grad_accum"], stage)


WARNING = re.compile(r"\[axolotl_savefix\] WARNING: (checkpoint-\d+ is incomplete.*)")


@pytest.mark.parametrize("variant", ["stock", "patched"])
def test_zero2_killed_inside_a_zero_save_before_latest(variant, e2e_root):
    """Rank 0 SIGKILLed after writing its ZeRO optimizer shard of the third save, before `latest`; the same command again.

    Patched: that folder lacks `latest` and trainer_state.json, is set aside, and the run resumes from the save before
    it, ending with the exact schedule. Stock resumes from the cut folder and dies.
    """
    patched = variant == "patched"
    case, config = _config(e2e_root, f"ds-zero2-cut-{variant}", "zero2", plugin=patched, auto_resume_from_checkpoints=True)
    cfg = yaml.safe_load(config.read_text())
    cfg["plugins"] = ["kill_shim.KillShim", *cfg["plugins"]]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    L, M = _shape(case)
    G, k, epochs = case["grad_accum"], case["saves_per_epoch"], case["num_epochs"]
    expected = reference.patched_saves(L, G, k, M) if patched else reference.stock_saves(L, G, k, epochs, M)
    cut = expected[2]
    out = harness.output_dir(config)

    code, first = _torchrun(config, SAVEFIX_KILL_AT=f"{cut}:zero_shard:0")
    assert code != 0, first[-4000:]
    assert f"[kill_shim] SIGKILL after writing checkpoint-{cut}/global_step{cut}/zero_pp_rank_0" in first
    folder = out / f"checkpoint-{cut}"
    assert (folder / f"global_step{cut}" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    assert not (folder / "latest").exists() and not (folder / "trainer_state.json").exists()

    code, second = _torchrun(config)
    if not patched:
        assert code != 0
        assert f"resume from checkpoint at {folder}" in second
        error = next(line for line in second.splitlines() if "FileNotFoundError" in line)  # its first error on the folder
        assert f"checkpoint-{cut}/trainer_state.json" in error
        return
    assert code == 0, second[-4000:]
    resumed_from = expected[1]
    assert f"resume from checkpoint at {out / f'checkpoint-{resumed_from}'}" in second
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in expected if s > resumed_from]  # the cut save again, nothing twice
    assert observed.kept == expected
    for step in observed.kept:
        assert_really_zero(out / f"checkpoint-{step}", 2)
    warnings = WARNING.findall(second)
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint-{cut} is incomplete: it lacks "), warnings
    assert f"resuming from checkpoint-{resumed_from}" in warnings[0]
    assert (out / f"incomplete-checkpoint-{cut}" / f"global_step{cut}").is_dir()
