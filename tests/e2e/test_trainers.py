"""Every other TRL trainer Axolotl builds, stock vs patched, exact saved and kept steps.

KTO, ORPO and SimPO go through Axolotl's RL builder (``rl: kto|orpo|simpo``; Axolotl's only
CPO trainer is ``AxolotlCPOTrainer``, built for ``rl: simpo`` with TRL's ``loss_type: simpo``:
there is no ``rl: cpo``). The reward model (``reward_model: true``, TRL's ``RewardTrainer``)
goes through the causal builder with a classification head on the tiny local Llama; the process
reward model is not in the matrix yet (see TRAINERS). Each runs ``axolotl train`` on a tiny
local data set in the format Axolotl's loader for that trainer expects (tests/fixture.py).
TRL's trainers log no save line: tests/e2e/save_log.py writes one.

``L`` (batches per epoch) is read back from the run and checked against the sample count, so a
collation that changed it would show; the expected steps come from tests/reference.py.
"""

import cases
import fixture
import harness
import pytest
import reference
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.engines]

HERE = harness.Path(__file__).parent
SAMPLES = 40  # micro batch 2: L = 20 per epoch; 3 saves per epoch, 2 epochs: M = 40

# trainer: (data writer, dataset ``type``, the config keys a user writes for it)
TRAINERS = {
    "kto": (fixture.write_kto_dataset, "chatml.ultra", {"rl": "kto", "remove_unused_columns": False}),
    "orpo": (
        fixture.write_orpo_dataset,
        "chat_template.argilla",
        {"rl": "orpo", "chat_template": "chatml", "remove_unused_columns": False},
    ),
    # simpo_gamma is required: Axolotl passes the unset key on as None over TRL's default, and the
    # first step fails (TypeError: unsupported operand type(s) for /: 'NoneType' and 'float'), stock or patched
    "simpo": (fixture.write_preference_dataset, "chatml", {"rl": "simpo", "simpo_gamma": 0.5, "remove_unused_columns": False}),
    "reward_model": (
        fixture.write_bradley_terry_dataset,
        "bradley_terry.chat_template",
        {"reward_model": True, "model_type": "AutoModelForSequenceClassification", "chat_template": "chatml"},
    ),
    # Not yet in the matrix: the process reward model (TRL's PRMTrainer). Its config below passes
    # `axolotl preprocess` (fixture.write_stepwise_dataset, type `stepwise_supervised`); no training
    # run of it was finished yet on this machine, so it is not asserted here:
    # {"process_reward_model": True, "model_type": "AutoModelForTokenClassification"}
}


def _config(root, trainer, *, plugin):
    writer, ds_type, keys = TRAINERS[trainer]
    case = {**cases.case("reported"), "samples": SAMPLES, "num_epochs": 2, "saves_per_epoch": 3}
    name = f"{trainer}-{'patched' if plugin else 'stock'}"
    config = harness.write_config(case, root / name, plugin=plugin)
    data = writer(root / f"{trainer}.jsonl", SAMPLES)
    cfg = yaml.safe_load(config.read_text())
    cfg.update(
        keys,
        datasets=[{"path": str(data), "ds_type": "json", "type": ds_type, "split": "train"}],
        dataset_prepared_path=str(root / f"prepared-{name}"),
        plugins=["save_log.SaveLog", *(cfg.get("plugins") or [])],
    )
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return case, config


@pytest.mark.parametrize("variant", ["stock", "patched"])
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_trainer_exact_saves(trainer, variant, e2e_root):
    case, config = _config(e2e_root, trainer, plugin=variant == "patched")
    observed = harness.run_cli(config, env={"PYTHONPATH": str(HERE)})
    G, k, epochs = case["grad_accum"], case["saves_per_epoch"], case["num_epochs"]
    L = observed.batches_per_epoch(G)
    assert L == SAMPLES // case["micro_batch"]  # every sample kept, one row per sample: no collation changed the count
    M = L * epochs
    assert observed.max_steps == M
    if variant == "stock":
        saved = reference.stock_saves(L, G, k, epochs, M)
        assert observed.saved == saved
        assert observed.kept == reference.kept(saved, reference.stock_limit(None))
    else:
        saved = reference.patched_saves(L, G, k, M)
        assert observed.saved == saved
        assert observed.kept == saved
    for step in observed.kept:  # a checkpoint a resume can load: weights and trainer state
        folder = observed.output_dir / f"checkpoint-{step}"
        assert (folder / "trainer_state.json").is_file()
        assert any(folder.glob("*.safetensors")), sorted(p.name for p in folder.iterdir())
