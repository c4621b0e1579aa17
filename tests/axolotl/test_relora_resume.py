"""ReLoRA (``relora: true``) resumed: the logged ``num_lora_restarts``, and the merged weights left as stock's.

``ReLoRACallback.num_lora_restarts`` (logged at every log) lives in memory only: any resume starts it
at 0. Its ``resume_from_checkpoint`` is set from the config before auto-resume fills it in, so an
auto-resume does not load ``checkpoint-N/relora``; the package leaves that as it is (Axolotl's own
loader fails on the folder its ``on_save`` writes: the user guide). Here the callback meets the state
Transformers hands it at ``on_train_begin`` of a run resumed at step 7 with a restart every 5 steps,
stock and patched; ``load_weight_checkpoint`` is replaced by a recorder.
"""

from types import SimpleNamespace

import pytest

import axolotl_savefix
from axolotl_savefix._infra import targets
from axolotl_savefix.rules.plan import relora_restarts

relora = pytest.importorskip(targets.RELORA_MODULE, reason="this Axolotl has no ReLoRA")

EVERY = 5  # jagged_restart_steps


@pytest.fixture
def loads(monkeypatch):
    loaded: list[str] = []
    monkeypatch.setattr(relora, "load_weight_checkpoint", lambda model, path: loaded.append(path))
    return loaded


@pytest.fixture
def output_dir(tmp_path):
    for step in (5, 7):
        (tmp_path / f"checkpoint-{step}" / "relora").mkdir(parents=True)
    return tmp_path


def _on_train_begin(output_dir, step, held=None):
    """The callback as the builder makes it (``ReLoRACallback(cfg)``), without the base model lookup."""
    callback = relora.ReLoRACallback.__new__(relora.ReLoRACallback)
    callback.resume_from_checkpoint = held
    callback.num_lora_restarts = 0
    for name in ("jagged_restart_steps", "relora_steps"):  # the interval's name up to 0.16 and from 0.17
        setattr(callback, name, EVERY)
    control = SimpleNamespace()
    callback.on_train_begin(SimpleNamespace(output_dir=str(output_dir)), SimpleNamespace(global_step=step), control, model=object())
    return callback


def test_stock_auto_resume_loads_no_merged_weights_and_restarts_the_count(output_dir, loads):
    callback = _on_train_begin(output_dir, 7)
    assert loads == []  # the defect: the original base model under the checkpoint's adapter
    assert callback.num_lora_restarts == 0  # the defect: the run made 1 restart (at step 5) before step 7


def test_patched_counts_the_restarts_and_leaves_the_merged_weights_as_stock(output_dir, loads):
    axolotl_savefix.apply()
    import axolotl.core.builders.base  # noqa: F401 - the builder's part (and the callback's) is applied on its import

    callback = _on_train_begin(output_dir, 7)
    assert loads == []  # auto-resume: stock's (nothing loaded), not routed into Axolotl's failing loader
    assert callback.num_lora_restarts == 1
    explicit = str(output_dir / "checkpoint-5")
    assert _on_train_begin(output_dir, 5, held=explicit).num_lora_restarts == 0  # the restart at 5 comes before step 6
    assert loads == [str(output_dir / "checkpoint-5" / "relora")]  # stock's path
    loads.clear()
    fresh = _on_train_begin(output_dir, 0)
    assert loads == [] and fresh.num_lora_restarts == 0
    axolotl_savefix.revert()
    assert _on_train_begin(output_dir, 7).num_lora_restarts == 0 and loads == []


@pytest.mark.parametrize(("step", "restarts"), [(0, 0), (1, 0), (5, 0), (6, 1), (10, 1), (11, 2)])
def test_relora_restarts_counts_the_multiples_before_the_step(step, restarts):
    # the uninterrupted callback: a restart at every on_step_begin whose global_step is a positive multiple
    counted = sum(1 for g in range(step) if g > 0 and g % EVERY == 0)
    assert relora_restarts(step, EVERY) == counted == restarts


def test_relora_restarts_refuses_a_zero_interval():
    with pytest.raises(ValueError, match="jagged_restart_steps must be 1 or more, not 0"):
        relora_restarts(3, 0)


def test_the_keep_all_limit_counts_relora_restart_folders(tmp_path):
    """Transformers' rotation counts ReLoRA's ``checkpoint-N/adapter`` folders: a keep-all limit of the saves alone drops one."""
    from axolotl.utils.dict import DictDefault

    from axolotl_savefix.seams.retention import PlanCallback

    def limit(**extra):
        cfg = DictDefault(num_epochs=2, saves_per_epoch=2, plugins=["axolotl_savefix.SaveFixPlugin"], **extra)
        callback = PlanCallback(cfg)
        args = SimpleNamespace(output_dir=str(tmp_path), optim="adamw_torch", save_only_model=False, save_total_limit=4)
        state = SimpleNamespace(max_steps=20)
        callback.on_train_begin(args, state, SimpleNamespace(), train_dataloader=[0] * 10)
        return args.save_total_limit

    saves = [5, 10, 15, 20]  # 2 per epoch, 10 steps each
    restarts = [g for g in range(20) if g > 0 and g % 3 == 0 and g not in saves]  # on_step_begin's rule
    assert limit() == len(saves)
    assert limit(relora=True, jagged_restart_steps=3) == len(saves) + len(restarts) == 9
    assert limit(relora=True, relora_steps=3) == 9  # the key's name from Axolotl 0.17
