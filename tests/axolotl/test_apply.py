"""apply() / revert() on the installed Axolotl's real objects."""

import importlib.machinery
import sys
import types

import axolotl.cli.config as cli_config
import axolotl.train as axolotl_train
import axolotl.utils.config as utils_config
import axolotl.utils.train as utils_train
import pytest
from axolotl.core.builders.base import TrainerBuilderBase
from axolotl.utils.dict import DictDefault

import axolotl_savefix
from axolotl_savefix import PatchTargetError, SaveFixConfigError
from axolotl_savefix._infra import targets as _targets

PATCHED = [
    (utils_config, "normalize_config"),
    (cli_config, "normalize_config"),  # the `from ... import normalize_config` copy
    (utils_config, "validate_config"),
    (cli_config, "validate_config"),
    (TrainerBuilderBase, "_configure_save_and_eval_strategy"),
    (TrainerBuilderBase, "get_callbacks"),
    (utils_train, "determine_last_checkpoint"),
    (axolotl_train, "determine_last_checkpoint"),  # the copy train() calls
    (axolotl_train, "save_trained_model"),  # the final model save (disk_full)
]


def _snapshot():
    return [vars(owner)[name] for owner, name in PATCHED]


def test_apply_patches_every_target_and_revert_restores_the_same_objects():
    before = _snapshot()
    assert axolotl_savefix.apply() is True
    after = _snapshot()
    assert all(a is not b for a, b in zip(after, before, strict=True))
    assert cli_config.normalize_config is utils_config.normalize_config
    axolotl_savefix.revert()
    assert all(a is b for a, b in zip(_snapshot(), before, strict=True))
    assert not axolotl_savefix.is_applied()


def test_apply_is_idempotent_and_revert_too():
    before = _snapshot()
    axolotl_savefix.apply()
    once = _snapshot()
    axolotl_savefix.apply()
    assert all(a is b for a, b in zip(_snapshot(), once, strict=True))
    axolotl_savefix.revert()
    axolotl_savefix.revert()
    assert all(a is b for a, b in zip(_snapshot(), before, strict=True))


def test_wrappers_keep_name_doc_and_signature():
    import inspect

    original = utils_config.normalize_config
    axolotl_savefix.apply()
    patched = utils_config.normalize_config
    assert patched.__name__ == "normalize_config" and inspect.unwrap(patched) is original
    assert inspect.signature(patched) == inspect.signature(original)


def test_moved_target_fails_naming_the_version_and_patches_nothing(monkeypatch):
    before = _snapshot()
    monkeypatch.delattr(TrainerBuilderBase, "get_callbacks")
    with pytest.raises(PatchTargetError) as err:
        axolotl_savefix.apply()
    message = str(err.value)
    assert f"axolotl {_targets.axolotl_version()}" in message
    assert "axolotl.core.builders.base.TrainerBuilderBase.get_callbacks" in message
    assert not axolotl_savefix.is_applied()
    monkeypatch.undo()
    assert all(a is b for a, b in zip(_snapshot(), before, strict=True))


def test_moved_transformers_target_names_the_transformers_release(monkeypatch):
    from transformers import Trainer

    monkeypatch.delattr(Trainer, "_save_checkpoint")  # disk_full's seam: moves with Transformers, not Axolotl
    with pytest.raises(PatchTargetError) as err:
        axolotl_savefix.apply()
    message = str(err.value)
    assert f"axolotl {_targets.axolotl_version()} with transformers {_targets.package_version('transformers')}:" in message
    assert "transformers.trainer.Trainer._save_checkpoint is missing" in message
    assert not axolotl_savefix.is_applied()


def test_changed_signature_fails_clearly(monkeypatch):
    monkeypatch.setattr(utils_config, "normalize_config", lambda config: None)
    with pytest.raises(PatchTargetError, match="no longer takes cfg"):
        axolotl_savefix.apply()


def test_steps_aside_when_axolotl_already_has_the_fix(monkeypatch):
    fixed = types.ModuleType(_targets.UPSTREAM_FIX_MODULE)
    fixed.__spec__ = importlib.machinery.ModuleSpec(_targets.UPSTREAM_FIX_MODULE, None)
    setattr(fixed, _targets.UPSTREAM_FIX_NAME, type(_targets.UPSTREAM_FIX_NAME, (), {}))  # upstream PR #1's callback
    monkeypatch.setitem(sys.modules, _targets.UPSTREAM_FIX_MODULE, fixed)
    before = _snapshot()
    assert axolotl_savefix.apply() is False
    assert all(a is b for a, b in zip(_snapshot(), before, strict=True))


def test_the_names_of_0_1_switch_their_seams_and_two_that_disagree_are_refused():
    """``save_steps`` and ``save_decision`` were two halves of one fix: one seam now, off together or refused."""
    from axolotl_savefix import seams

    assert "saves_per_epoch" not in seams.chosen({"save_decision": False})
    assert seams.chosen({"resume": False}) == tuple(
        n for n in seams.NAMES if n not in ("incomplete_checkpoints", "several_nodes", "resume_matches_run", "backports")
    )
    with pytest.raises(ValueError, match="disagree on the seam saves_per_epoch"):
        axolotl_savefix.apply(save_steps=True, save_decision=False)
    with pytest.raises(TypeError, match="unknown option 'save_stepz'"):
        axolotl_savefix.apply(save_stepz=False)
    assert not axolotl_savefix.is_applied()


def test_patched_normalize_config_sets_no_float_ratio_and_checks_first():
    axolotl_savefix.apply()
    with pytest.raises(SaveFixConfigError, match="saves_per_epoch: 4 conflicts with save_strategy"):
        utils_config.normalize_config(DictDefault(saves_per_epoch=4, save_strategy="epoch"))


def configured_builder(cfg, eval_dataset=None):
    """Axolotl's builder for ``cfg`` (no model), and the save/eval training args it configured.

    Shared by the seam tests of this folder (``from test_apply import configured_builder``).
    """

    class Builder(TrainerBuilderBase):
        def build(self, total_num_steps):  # abstract upstream
            raise NotImplementedError

    builder = Builder.__new__(Builder)
    builder.cfg = DictDefault(cfg)
    builder.eval_dataset = eval_dataset
    builder.model = None
    kwargs = {}
    builder._configure_save_and_eval_strategy(kwargs)
    return builder, kwargs


def per_epoch_callbacks(builder):
    """The package's per-epoch callbacks among the builder's."""
    from axolotl_savefix._infra.per_epoch import PerEpochCallback

    return [cb for cb in builder.get_callbacks() if isinstance(cb, PerEpochCallback)]


def test_builder_hands_evals_to_the_callback():
    from axolotl_savefix._infra.per_epoch import NEVER
    from axolotl_savefix.seams.evals_per_epoch import EvalsPerEpochCallback

    evals = {"evals_per_epoch": 4, "val_set_size": 0.1, "saves_per_epoch": 2}
    axolotl_savefix.apply()
    builder, kwargs = configured_builder(evals, eval_dataset=[1])
    assert (kwargs["eval_strategy"], kwargs["eval_steps"], kwargs["eval_on_start"]) == ("steps", NEVER, True)
    assert kwargs["save_steps"] % kwargs["eval_steps"] == 0  # what load_best_model_at_end asks Transformers
    assert EvalsPerEpochCallback in {type(cb) for cb in builder.get_callbacks()}
    _, kwargs = configured_builder({**evals, "eval_on_start": False}, eval_dataset=[1])
    assert kwargs["eval_on_start"] is False
    # no validation set: no evaluation, as upstream
    builder, kwargs = configured_builder({**evals, "val_set_size": 0})
    assert kwargs["eval_strategy"] == "no"
    assert EvalsPerEpochCallback not in {type(cb) for cb in builder.get_callbacks()}


def test_load_best_model_at_end_asked_for_is_kept_with_per_epoch_saves_and_evals():
    """Stock's builder decides it on the float ratios the per-epoch seams never set (issue 39's review): kept."""
    from axolotl_savefix._infra.per_epoch import NEVER

    best = {"evals_per_epoch": 4, "val_set_size": 0.1, "saves_per_epoch": 2, "load_best_model_at_end": True}
    axolotl_savefix.apply()
    builder, kwargs = configured_builder(best, eval_dataset=[1])
    assert (kwargs["save_steps"], kwargs["eval_steps"]) == (NEVER, NEVER)
    kwargs["load_best_model_at_end"] = False  # what the causal builder computed from cfg.save_steps (unset)
    assert builder.hook_pre_create_training_args(kwargs)["load_best_model_at_end"] is True
    builder, kwargs = configured_builder({**best, "load_best_model_at_end": False}, eval_dataset=[1])
    kwargs["load_best_model_at_end"] = False
    assert builder.hook_pre_create_training_args(kwargs)["load_best_model_at_end"] is False  # not asked for


def test_best_model_with_evals_per_epoch_alone_saves_once_per_epoch_on_the_evals_strategy():
    """Saves unset are Axolotl's epoch strategy, which load_best_model_at_end would find at odds with the evals'
    steps strategy (Transformers: "requires the save and eval strategy to match"): they become saves_per_epoch: 1."""
    from axolotl_savefix._infra.per_epoch import NEVER, EvalsPerEpochCallback, SavesPerEpochCallback

    best = {"evals_per_epoch": 4, "val_set_size": 0.1, "load_best_model_at_end": True}
    _, stock = configured_builder(best, eval_dataset=[1])
    assert stock["save_strategy"] == "epoch" and "save_steps" not in stock  # Axolotl's default saves
    axolotl_savefix.apply()
    for cfg in (best, {**best, "save_strategy": "epoch"}, {**best, "load_best_model_at_end": False, "early_stopping_patience": 3}):
        builder, kwargs = configured_builder(cfg, eval_dataset=[1])
        assert (kwargs["save_strategy"], kwargs["save_steps"]) == ("steps", NEVER)
        assert (kwargs["eval_strategy"], kwargs["eval_steps"]) == ("steps", NEVER)
        callbacks = builder.get_callbacks()
        saves = [cb for cb in callbacks if type(cb) is SavesPerEpochCallback]
        assert [cb.per_epoch for cb in saves] == [1]
        assert [cb.per_epoch for cb in callbacks if type(cb) is EvalsPerEpochCallback] == [4]
        kwargs["load_best_model_at_end"] = False  # what the causal builder computed from cfg.save_steps (unset)
        assert builder.hook_pre_create_training_args(kwargs)["load_best_model_at_end"] is True


@pytest.mark.parametrize(
    "cfg",
    [
        {"evals_per_epoch": 4, "val_set_size": 0.1, "load_best_model_at_end": False},  # not asked for
        {"evals_per_epoch": 4, "val_set_size": 0, "load_best_model_at_end": True},  # no validation set
        {"evals_per_epoch": 4, "val_set_size": 0.1, "load_best_model_at_end": True, "saves_per_epoch": 0},  # 0: off
    ],
)
def test_evals_per_epoch_alone_without_the_best_model_keeps_axolotls_epoch_saves(cfg):
    from axolotl_savefix._infra.per_epoch import SavesPerEpochCallback

    _, stock = configured_builder(cfg, eval_dataset=[1] if cfg["val_set_size"] else None)
    axolotl_savefix.apply()
    builder, kwargs = configured_builder(cfg, eval_dataset=[1] if cfg["val_set_size"] else None)
    saves = (kwargs["save_strategy"], kwargs.get("save_steps"))
    assert saves == (stock["save_strategy"], stock.get("save_steps")) == ("epoch", None)
    assert SavesPerEpochCallback not in {type(cb) for cb in builder.get_callbacks()}


def _minimal_cfg(tmp_path, **extra):
    return DictDefault(
        base_model="tiny",
        datasets=[{"path": "data.jsonl", "type": "completion"}],
        micro_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        num_epochs=1,
        sequence_len=64,
        output_dir=str(tmp_path),
        val_set_size=0.1,
        **extra,
    )


def test_early_stopping_with_aligned_per_epoch_keys_validates(tmp_path):
    per_epoch = {"saves_per_epoch": 2, "evals_per_epoch": 4, "early_stopping_patience": 3}
    with pytest.raises(ValueError, match="early_stopping_patience"):  # stock: needs save_steps and eval_steps
        utils_config.validate_config(_minimal_cfg(tmp_path, **per_epoch))
    axolotl_savefix.apply()
    cfg = _minimal_cfg(tmp_path, **per_epoch)
    validated = cli_config.validate_config(cfg)  # the copy load_cfg calls
    assert validated.early_stopping_patience == 3 and cfg.early_stopping_patience == 3
    with pytest.raises(SaveFixConfigError, match="saves_per_epoch: 3 does not divide evals_per_epoch: 4"):
        cli_config.validate_config(_minimal_cfg(tmp_path, **{**per_epoch, "saves_per_epoch": 3}))


def test_early_stopping_with_evals_per_epoch_alone_validates(tmp_path):
    """Axolotl's default saves (once per epoch, at each epoch end) are aligned with any evals_per_epoch."""
    evals_only = {"evals_per_epoch": 4, "early_stopping_patience": 3}
    with pytest.raises(ValueError, match="early_stopping_patience"):  # stock: needs save_steps and eval_steps
        utils_config.validate_config(_minimal_cfg(tmp_path, **evals_only))
    axolotl_savefix.apply()
    cfg = _minimal_cfg(tmp_path, **evals_only)
    validated = cli_config.validate_config(cfg)
    assert validated.early_stopping_patience == 3 and cfg.early_stopping_patience == 3
    assert validated.get("saves_per_epoch") is None
    # saves that are not once per epoch: Axolotl's own refusal, as in stock
    with pytest.raises(ValueError, match="early_stopping_patience"):
        cli_config.validate_config(_minimal_cfg(tmp_path, **evals_only, save_steps=10))


def test_builder_hands_saves_to_the_callback_and_fixes_the_limit():
    from axolotl_savefix.seams.retention import PlanCallback
    from axolotl_savefix.seams.saves_per_epoch import NEVER, SavesPerEpochCallback

    configure = configured_builder

    _, stock = configure({"saves_per_epoch": 4, "save_total_limit": 0, "val_set_size": 0})
    assert stock["save_total_limit"] == 4 and stock["save_strategy"] == "epoch"  # the defects

    axolotl_savefix.apply()
    _, kwargs = configure({"saves_per_epoch": 4, "save_total_limit": 0, "val_set_size": 0})
    assert kwargs["save_strategy"] == "steps" and kwargs["save_steps"] == NEVER
    assert kwargs["save_total_limit"] is None  # 0 keeps all
    _, kwargs = configure({"save_total_limit": 3, "val_set_size": 0})
    assert kwargs["save_total_limit"] == 3 and kwargs["save_strategy"] == "epoch"
    builder, kwargs = configure({"saves_per_epoch": 2, "val_set_size": 0})
    assert kwargs["save_total_limit"] == 4  # floor until the run's shape is known
    builder.model = None
    kinds = {type(cb) for cb in builder.get_callbacks()}
    assert {SavesPerEpochCallback, PlanCallback} <= kinds


def test_savefix_disk_margin_is_checked_and_kept_past_axolotls_schema(tmp_path):
    assert "savefix_disk_margin" not in utils_config.validate_config(_minimal_cfg(tmp_path, savefix_disk_margin=0.3))
    axolotl_savefix.apply()
    assert cli_config.validate_config(_minimal_cfg(tmp_path, savefix_disk_margin=0.3)).savefix_disk_margin == 0.3
    with pytest.raises(SaveFixConfigError, match="savefix_disk_margin: 1.5 is not a share"):
        cli_config.validate_config(_minimal_cfg(tmp_path, savefix_disk_margin=1.5))


def test_config_checks_see_axolotls_coerced_values(tmp_path):
    """`evals_per_epoch: "4"` is what Axolotl's schema turns into 4: accepted as in stock, not refused as a string."""
    axolotl_savefix.apply()
    assert cli_config.validate_config(_minimal_cfg(tmp_path, evals_per_epoch="4")).evals_per_epoch == 4
    assert cli_config.validate_config(_minimal_cfg(tmp_path, evals_per_epoch=0)).evals_per_epoch == 0


def _checkpoint(root, step, *, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return folder


def test_resume_takes_the_newest_complete_checkpoint_and_sets_the_cut_one_aside(tmp_path):
    for step in (8, 15):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 23, complete=False)
    stock_cfg = DictDefault(output_dir=str(tmp_path), auto_resume_from_checkpoints=True)
    assert utils_train.determine_last_checkpoint(stock_cfg) == str(tmp_path / "checkpoint-23")  # the defect
    axolotl_savefix.apply()
    cfg = DictDefault(output_dir=str(tmp_path), auto_resume_from_checkpoints=True)
    assert axolotl_train.determine_last_checkpoint(cfg) == str(tmp_path / "checkpoint-15")
    assert cfg.resume_from_checkpoint == str(tmp_path / "checkpoint-15")
    assert (tmp_path / "incomplete-checkpoint-23").is_dir() and not (tmp_path / "checkpoint-23").exists()


def test_an_explicit_cut_save_is_refused_naming_the_newest_complete(tmp_path):
    """A save of this package's that never finished (its pending record), or a cut trainer_state.json: refused."""
    from axolotl_savefix.rules import checkpoints
    from axolotl_savefix.seams.incomplete_checkpoints import IncompleteCheckpointError

    _checkpoint(tmp_path, 8)
    cut = _checkpoint(tmp_path, 23, complete=False)
    checkpoints.write_pending(cut, 23, True, "test")
    torn = _checkpoint(tmp_path, 30)
    (torn / "trainer_state.json").write_text('{"global_st')
    axolotl_savefix.apply()
    for folder, lack in ((cut, "trainer_state.json (never written"), (torn, "trainer_state.json (cut while being written)")):
        cfg = DictDefault(output_dir=str(tmp_path), resume_from_checkpoint=str(folder))
        with pytest.raises(IncompleteCheckpointError) as err:
            axolotl_train.determine_last_checkpoint(cfg)
        message = str(err.value)
        assert f"resume_from_checkpoint: {folder} is not a complete checkpoint" in message
        assert lack in message and str(tmp_path / "checkpoint-8") in message


def test_an_explicit_folder_without_trainer_state_is_a_warm_start_as_in_stock(tmp_path, caplog):
    """Issue 37: Transformers takes a folder without trainer_state.json as weights to start from (step 0): not refused."""
    weights = _checkpoint(tmp_path, 23, complete=False)
    stock_cfg = DictDefault(output_dir=str(tmp_path), resume_from_checkpoint=str(weights))
    assert utils_train.determine_last_checkpoint(stock_cfg) == str(weights)
    axolotl_savefix.apply()
    cfg = DictDefault(output_dir=str(tmp_path), resume_from_checkpoint=str(weights))
    assert axolotl_train.determine_last_checkpoint(cfg) == str(weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-23"]  # nothing moved


def test_auto_resume_off_changes_nothing_on_disk(tmp_path):
    """Issue 37: without auto-resume nothing is resumed, so nothing is set aside or deleted (stock touches no folder)."""
    from axolotl_savefix.rules import checkpoints

    _checkpoint(tmp_path, 8)
    own = _checkpoint(tmp_path, 15, complete=False)
    checkpoints.write_pending(own, 15, True, "test")
    _checkpoint(tmp_path, 23, complete=False)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    axolotl_savefix.apply()
    for update in (True, False):  # a training start; the merge of sharded weights
        cfg = DictDefault(output_dir=str(tmp_path), auto_resume_from_checkpoints=not update and None)
        axolotl_train.determine_last_checkpoint(cfg, update=update)
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_the_builder_is_patched_when_axolotl_imports_it_not_before():
    """apply() at config time does not import the trainer builder (2 s of imports, measured slower early)."""
    import subprocess

    code = (
        "import sys, axolotl_savefix, axolotl.cli.config\n"
        "assert axolotl_savefix.apply() is True\n"
        "assert 'axolotl.core.builders.base' not in sys.modules\n"
        "from axolotl.core.builders.base import TrainerBuilderBase as B\n"
        "assert B.get_callbacks.__savefix_original__ and B._configure_save_and_eval_strategy.__savefix_original__\n"
        "axolotl_savefix.revert()\n"
        "assert not hasattr(B.get_callbacks, '__savefix_original__')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_apply_again_with_more_seams_adds_them_and_says_so(caplog):
    """Issue 38: ``apply(preemption=False)`` then ``apply()`` used to stay without the preemption seam, silently."""
    import axolotl.train as axolotl_train

    stock_handler = axolotl_train.setup_signal_handler
    assert axolotl_savefix.apply(preemption=False) is True
    assert axolotl_train.setup_signal_handler is stock_handler and "preemption" not in axolotl_savefix.applied()
    assert axolotl_savefix.apply() is True
    assert axolotl_train.setup_signal_handler is not stock_handler and "preemption" in axolotl_savefix.applied()
    assert axolotl_savefix.apply(preemption=False) is True  # fewer: nothing changes, one warning says so
    assert axolotl_train.setup_signal_handler is not stock_handler
    axolotl_savefix.revert()
    assert axolotl_train.setup_signal_handler is stock_handler and axolotl_savefix.applied() == ()


def test_the_patched_line_names_every_seam_in_place(monkeypatch):
    from axolotl_savefix import seams
    from axolotl_savefix._infra import log

    said = []
    monkeypatch.setattr(log.LOG, "log", lambda level, message: said.append(message))
    log.forget()
    axolotl_savefix.apply(full_disk=False)
    line = next(message for message in said if message.startswith("patched axolotl"))
    assert line.endswith(": " + ", ".join(n for n in seams.NAMES if n != "full_disk"))
