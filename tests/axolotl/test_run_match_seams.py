"""Issue 22's seams on real Axolotl: the key past the schema, the callbacks the builder adds, eval_on_start on resume."""

from types import SimpleNamespace

import axolotl.utils.config as utils_config
import pytest
from test_apply import _minimal_cfg, configured_builder

import axolotl_savefix
from axolotl_savefix import SaveFixConfigError
from axolotl_savefix._infra.journal import SaveFixCheckpointRecord
from axolotl_savefix.rules.run_match import RunMismatchError
from axolotl_savefix.seams.resume_matches_run import NoEvalOnResumeCallback, RunMatchCallback


def test_savefix_resume_anyway_is_checked_and_kept_past_axolotls_schema(tmp_path):
    assert "savefix_resume_anyway" not in utils_config.validate_config(_minimal_cfg(tmp_path, savefix_resume_anyway=True))
    axolotl_savefix.apply()
    assert utils_config.validate_config(_minimal_cfg(tmp_path, savefix_resume_anyway=True)).savefix_resume_anyway is True
    with pytest.raises(SaveFixConfigError, match="savefix_resume_anyway: 'yes' is not true or false"):
        utils_config.validate_config(_minimal_cfg(tmp_path, savefix_resume_anyway="yes"))


def test_builder_adds_the_record_the_match_check_and_no_eval_on_resume():
    axolotl_savefix.apply()
    builder, _ = configured_builder({"val_set_size": 0.1, "sequence_len": 64, "micro_batch_size": 2}, eval_dataset=[1])
    callbacks = builder.get_callbacks()
    record = next(cb for cb in callbacks if isinstance(cb, SaveFixCheckpointRecord))
    assert record.fingerprint["sequence_len"] == 64 and record.fingerprint["micro_batch_size"] == 2
    assert any(isinstance(cb, RunMatchCallback) for cb in callbacks)
    assert any(isinstance(cb, NoEvalOnResumeCallback) for cb in callbacks)


def test_eval_on_start_is_skipped_on_resume_only():
    args, control = SimpleNamespace(eval_on_start=True), object()
    callback = NoEvalOnResumeCallback()
    callback.on_train_begin(args, SimpleNamespace(global_step=0), control)
    assert args.eval_on_start is True  # a fresh run evaluates its start
    callback.on_train_begin(args, SimpleNamespace(global_step=15), control)
    assert args.eval_on_start is False
    callback.on_train_end(args, SimpleNamespace(global_step=60), control)
    assert args.eval_on_start is True


def test_an_explicit_eval_on_start_is_kept_on_resume():
    """Axolotl 0.21's ``eval_on_start: true`` is the user's choice: the resumed step is evaluated again (upstream review)."""
    axolotl_savefix.apply()
    builder, _ = configured_builder({"val_set_size": 0.1, "eval_on_start": True}, eval_dataset=[1])
    callback = next(cb for cb in builder.get_callbacks() if isinstance(cb, NoEvalOnResumeCallback))
    args, control = SimpleNamespace(eval_on_start=True), object()
    callback.on_train_begin(args, SimpleNamespace(global_step=15), control)
    assert args.eval_on_start is True
    unset, _ = configured_builder({"val_set_size": 0.1}, eval_dataset=[1])
    callback = next(cb for cb in unset.get_callbacks() if isinstance(cb, NoEvalOnResumeCallback))
    callback.on_train_begin(args, SimpleNamespace(global_step=15), control)
    assert args.eval_on_start is False  # Axolotl's default, not the user's: the restored step is not evaluated twice


def test_auto_resume_past_the_end_stops_at_train_begin(tmp_path):
    checkpoint = tmp_path / "checkpoint-60"
    checkpoint.mkdir()
    for name in ("optimizer.pt", "scheduler.pt"):
        (checkpoint / name).write_bytes(b"")
    (checkpoint / "trainer_state.json").write_text('{"global_step": 60}')
    cfg = {"output_dir": str(tmp_path)}
    callback = RunMatchCallback(cfg, {})  # built before auto-resume chose a checkpoint
    cfg["resume_from_checkpoint"] = str(checkpoint)
    state = SimpleNamespace(global_step=60, max_steps=30)
    with pytest.raises(RunMismatchError, match="at or past this run's last step \\(30\\)"):
        callback.on_train_begin(SimpleNamespace(world_size=1), state, object())
    explicit = RunMatchCallback(cfg, {})  # set before the builder: the user's choice, resumed as stock
    explicit.on_train_begin(SimpleNamespace(world_size=1), state, object())
