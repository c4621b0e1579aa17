"""The engines on CUDA: FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 over 2 GPUs, stock vs patched.

Collected only by ``nox -s e2e_gpu`` (passed by name), which skips where torch sees no GPU.
A case that needs more GPUs (or DeepSpeed) than the machine has is skipped with a message
naming what is missing. DeepSpeed configs are Axolotl's own ``deepspeed_configs/`` from the
sdist of the installed release (``SAVEFIX_DEEPSPEED_CONFIGS``). Expected steps come from
tests/reference.py with L per rank; saved steps from tests/e2e/save_log.py.
"""

import importlib.util
import os

import cases
import harness
import pytest
import reference
import torch
import yaml
from test_engines import FSDP, assert_exact_saves

pytestmark = pytest.mark.e2e

HERE = harness.Path(__file__).parent
WORLD = 2


def _needs(world: int, deepspeed: bool = False) -> None:
    count = torch.cuda.device_count()
    if count < world:
        pytest.skip(f"needs {world} GPUs; this machine has {count}")
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs the deepspeed package (pip install deepspeed) in the Axolotl environment")
    if deepspeed and not os.environ.get("SAVEFIX_DEEPSPEED_CONFIGS"):
        pytest.skip("needs SAVEFIX_DEEPSPEED_CONFIGS: Axolotl's deepspeed_configs/ folder (nox -s e2e_gpu sets it)")


def _run(root, name, *, plugin, engine):
    case = cases.case("reported")
    config = harness.write_config(case, root / name, plugin=plugin, device="cuda-bf16")
    cfg = yaml.safe_load(config.read_text())
    if engine == "fsdp2":
        cfg.update(FSDP)
    else:
        cfg["deepspeed"] = str(harness.Path(os.environ["SAVEFIX_DEEPSPEED_CONFIGS"]) / f"{engine}.json")
    cfg["plugins"] = ["save_log.SaveLog", *(cfg.get("plugins") or [])]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    observed = harness.run_cli(
        config,
        launcher=harness.torchrun(config, WORLD),
        env={"PYTHONPATH": str(HERE)},
    )
    L = case["samples"] // (case["micro_batch"] * WORLD)
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"], WORLD)
    return case, observed, L, M


@pytest.mark.parametrize("variant", ["stock", "patched"])
@pytest.mark.parametrize("engine", ["fsdp2", "zero2", "zero3"])
def test_engine_on_two_gpus(engine, variant, e2e_root):
    _needs(WORLD, deepspeed=engine != "fsdp2")
    case, observed, L, M = _run(e2e_root, f"gpu-{engine}-{variant}", plugin=variant == "patched", engine=engine)
    assert observed.batches_per_epoch(case["grad_accum"]) == L and observed.max_steps == M
    assert_exact_saves(observed, case, variant, L, M)
