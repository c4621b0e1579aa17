"""The engines and trainers users scale with: FSDP2 (2 CPU processes, sharded state dict) and DPO.

FSDP2 runs through torchrun with the test-only shim tests/e2e/cpu_fsdp_shim.py; that the run
really was FSDP is checked from what it wrote (sharded folders in every checkpoint, no
``model.safetensors``). Expected steps come from tests/reference.py with L per rank.
"""

import json
import re

import cases
import harness
import pytest
import reference
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.engines]

HERE = harness.Path(__file__).parent
WORLD = 2
FSDP = harness.FSDP2


def _fsdp_config(root, name, *, plugin, **extra):
    case = cases.case("reported")
    config = harness.write_config(case, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    cfg.update(FSDP, **extra)
    cfg["plugins"] = ["cpu_fsdp_shim.CpuFsdpShim", "save_log.SaveLog", *(cfg.get("plugins") or [])]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return case, config


def _torchrun(config):
    return harness.run_cli(
        config,
        launcher=harness.torchrun(config, WORLD),
        env={"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(HERE)},
    )


def _shape(case):
    L = case["samples"] // (case["micro_batch"] * WORLD)  # batches per epoch, per rank
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"], WORLD)
    return L, M


def assert_really_fsdp(folder):
    """A DDP fallback writes model.safetensors and optimizer.pt; FSDP2 with SHARDED_STATE_DICT writes shards."""
    names = {p.name for p in folder.iterdir()}
    assert {"pytorch_model_fsdp_0", "optimizer_0"} <= names, names
    assert "model.safetensors" not in names and "optimizer.pt" not in names
    assert (folder / "pytorch_model_fsdp_0" / ".metadata").is_file()
    assert len(list((folder / "pytorch_model_fsdp_0").glob("*.distcp"))) == WORLD  # one shard per rank
    assert {f"rng_state_{r}.pth" for r in range(WORLD)} <= names


def assert_exact_saves(observed, case, variant, L, M):
    """Stock: the float-ratio interval, the last 4 kept. Patched: the per-epoch rule, all kept (limit unset)."""
    G, k, epochs = case["grad_accum"], case["saves_per_epoch"], case["num_epochs"]
    if variant == "stock":
        saved = reference.stock_saves(L, G, k, epochs, M)
        assert observed.saved == saved and observed.kept == reference.kept(saved, reference.stock_limit(None))
    else:
        saved = reference.patched_saves(L, G, k, M)
        assert observed.saved == saved and observed.kept == saved


def _seed_foreign_folders(output_dir):
    """Two set-aside folders of another run (a user's file in each), in ``output_dir`` before the run.

    Issue 37: neither the start of a run without auto-resume nor the end of a sharded one
    (``save_trained_model`` -> ``determine_last_checkpoint(update=False)``) may change them; before
    the fix the start deleted the older one ("only the newest set-aside folder is kept").
    """
    seeded = {}
    for step in (2, 3):
        aside = output_dir / f"incomplete-checkpoint-{step}"
        aside.mkdir(parents=True)
        (aside / "notes.txt").write_text(f"a user's file {step}")
        seeded[f"{aside.name}/notes.txt"] = (aside / "notes.txt").read_bytes()
    return seeded


@pytest.mark.parametrize("variant", ["stock", "patched"])
def test_fsdp2_sharded_exact_saves(variant, e2e_root):
    case, config = _fsdp_config(e2e_root, f"fsdp-{variant}", plugin=variant == "patched")
    seeded = _seed_foreign_folders(harness.output_dir(config))
    observed = _torchrun(config)
    L, M = _shape(case)
    assert observed.batches_per_epoch(case["grad_accum"]) == L and observed.max_steps == M
    now = {name: (observed.output_dir / name).read_bytes() for name in seeded if (observed.output_dir / name).is_file()}
    assert now == seeded  # the seeded folders are there, unchanged, stock and patched alike
    assert_exact_saves(observed, case, variant, L, M)
    for step in observed.kept:
        assert_really_fsdp(observed.output_dir / f"checkpoint-{step}")


def test_fsdp2_resume_from_a_sharded_mid_epoch_checkpoint(e2e_root):
    case, first_config = _fsdp_config(e2e_root, "fsdp-resume-first", plugin=True, max_steps=None)
    L, M = _shape(case)
    expected = reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)
    stop = expected[1]  # half way through epoch 1
    first = _torchrun(first_config)
    assert first.saved == expected
    _, config = _fsdp_config(e2e_root, "fsdp-resume-second", plugin=True)
    harness.resume_from_copy(config, first.output_dir, stop)
    second = _torchrun(config)
    assert second.saved == [s for s in expected if s > stop]
    assert second.kept == [s for s in expected if s >= stop]  # the resumed-from checkpoint and every later one
    for step in second.kept:
        assert_really_fsdp(second.output_dir / f"checkpoint-{step}")


def test_fsdp2_unset_limit_measures_the_whole_sharded_checkpoint(e2e_root):
    """The disk rule's measurement is taken after every rank wrote: it equals the folder's final size."""
    case, config = _fsdp_config(e2e_root, "fsdp-measure", plugin=True)
    observed = _torchrun(config)
    log = (config.parent / "train.log").read_text()
    measured = re.findall(r"\[axolotl_savefix\] INFO: measured checkpoint-(\d+): (\d+) bytes", log)
    assert len(measured) == 1, measured
    step, size = int(measured[0][0]), int(measured[0][1])
    folder = observed.output_dir / f"checkpoint-{step}"
    assert size == harness.du_bytes(folder)  # allocated on disk, as the free space is counted


# DPO: Axolotl's RL builder (TRL's DPOTrainer), preference pairs in chatml.
DPO_SAMPLES = 40


def _dpo_config(root, name, *, plugin):
    import random

    import fixture

    case = {**cases.case("reported"), "samples": DPO_SAMPLES, "num_epochs": 2, "saves_per_epoch": 3}
    config = harness.write_config(case, root / name, plugin=plugin)
    data = root / "dpo.jsonl"
    rng = random.Random(0)
    words = fixture.VOCAB_WORDS
    with data.open("w", encoding="utf-8") as f:
        for _ in range(DPO_SAMPLES):
            row = {k: " ".join(rng.choices(words, k=rng.randint(4, 8))) for k in ("prompt", "chosen", "rejected")}
            f.write(json.dumps(row) + "\n")
    cfg = yaml.safe_load(config.read_text())
    cfg.update(
        rl="dpo",
        datasets=[{"path": str(data), "ds_type": "json", "type": "chatml", "split": "train"}],
        dataset_prepared_path=str(root / f"prepared-{name}"),
        remove_unused_columns=False,
        plugins=["save_log.SaveLog", *(cfg.get("plugins") or [])],
    )
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return case, config


@pytest.mark.parametrize("variant", ["stock", "patched"])
def test_dpo_exact_saves(variant, e2e_root):
    case, config = _dpo_config(e2e_root, f"dpo-{variant}", plugin=variant == "patched")
    observed = harness.run_cli(config, env={"PYTHONPATH": str(HERE)})
    L = DPO_SAMPLES // case["micro_batch"]
    assert observed.batches_per_epoch(case["grad_accum"]) == L
    assert observed.max_steps == L * case["num_epochs"]
    assert_exact_saves(observed, case, variant, L, observed.max_steps)
