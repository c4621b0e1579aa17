"""Axolotl issue 3940: an auto-resumed run's ``include_tkps`` counters (tokens/total, tokens/trainable).

Axolotl builds ``TokensPerSecondCallback`` with ``cfg.resume_from_checkpoint`` before
``determine_last_checkpoint`` sets it: on an auto-resume it holds None and the restore of the
checkpoint's ``tokens_state.json`` is skipped. Here the callback meets the state Transformers hands it
at ``on_train_begin`` of a run resumed at step 5, stock and patched.
"""

import inspect
import json
from types import SimpleNamespace

import pytest

import axolotl_savefix
from axolotl_savefix._infra import targets
from axolotl_savefix.seams import backports

tokens_per_second = pytest.importorskip(targets.TOKENS_MODULE, reason="this Axolotl has no TokensPerSecondCallback")


FIXED_UPSTREAM = "cfg" in inspect.signature(tokens_per_second.TokensPerSecondCallback).parameters  # 0.20 on (PR 3941)


def _on_train_begin(output_dir, step, held=None):
    cls = tokens_per_second.TokensPerSecondCallback
    # as the builder makes it; up to Axolotl 0.1x it also takes the config's tensor and context parallel sizes (unset)
    sizes = {k: None for k in ("tensor_parallel_size", "context_parallel_size") if k in inspect.signature(cls).parameters}
    if FIXED_UPSTREAM:  # built with the config, whose resume_from_checkpoint auto-resume sets before train begin
        resumed = held or (str(output_dir / f"checkpoint-{step}") if step else None)
        sizes["cfg"] = SimpleNamespace(resume_from_checkpoint=resumed)
    callback = cls(**sizes, resume_from_checkpoint=held)
    state = SimpleNamespace(global_step=step)
    callback.on_train_begin(SimpleNamespace(output_dir=str(output_dir)), state, SimpleNamespace())
    return {k: int(v) for k, v in getattr(state, "tokens", {}).items()}, callback


def _written_name():
    """The name ``AxolotlTrainer._save`` writes the counters under (its module's ``TOKENS_STATE_FILE``)."""
    import importlib

    return importlib.import_module(targets.TARGETS["tokens_file_written"].module).TOKENS_STATE_FILE


@pytest.fixture
def output_dir(tmp_path):
    """checkpoint-5 and checkpoint-10, each with its counters in the file the trainer writes."""
    for step, total in ((5, 640), (10, 1280)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / _written_name()).write_text(json.dumps({"total": total, "trainable": total // 2}))
    return tmp_path


def test_stock_auto_resume_restarts_the_counters_at_zero(output_dir):
    restored, _ = _on_train_begin(output_dir, 5)
    if FIXED_UPSTREAM:  # Axolotl 0.20 on: the callback reads the config at train begin
        assert restored == {"total": 640, "trainable": 320}
    else:
        assert restored == {}  # the defect: nothing restored, the trainer starts counting from 0


def test_patched_steps_aside_where_the_callback_reads_the_config():
    on_train_begin = tokens_per_second.TokensPerSecondCallback.on_train_begin
    axolotl_savefix.apply()
    import axolotl.core.builders.base  # noqa: F401 - the builder's part (and the callback's) is applied on its import

    try:
        patched = tokens_per_second.TokensPerSecondCallback.on_train_begin is not on_train_begin
        assert patched is not FIXED_UPSTREAM
    finally:
        axolotl_savefix.revert()
    assert tokens_per_second.TokensPerSecondCallback.on_train_begin is on_train_begin


def test_patched_auto_resume_restores_the_resumed_checkpoints_counters(output_dir):
    axolotl_savefix.apply()
    import axolotl.core.builders.base  # noqa: F401 - the builder's part (and the callback's) is applied on its import

    restored, callback = _on_train_begin(output_dir, 5)
    assert restored == {"total": 640, "trainable": 320}  # checkpoint-5's, not checkpoint-10's
    assert callback.resume_from_checkpoint is None  # only for that call: the callback holds what the builder gave
    assert _on_train_begin(output_dir, 0)[0] == {}  # a fresh run: nothing to restore
    explicit = output_dir / "checkpoint-10"
    assert _on_train_begin(output_dir, 5, held=str(explicit))[0] == {"total": 1280, "trainable": 640}  # stock's path
    axolotl_savefix.revert()
    assert _on_train_begin(output_dir, 5)[0] == ({"total": 640, "trainable": 320} if FIXED_UPSTREAM else {})  # stock's


@pytest.fixture
def written(tmp_path):
    """checkpoint-5 with the counters in the file the trainer writes (``tokens_state.`` on Axolotl 0.13.2 to 0.15.0)."""
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    (folder / _written_name()).write_text(json.dumps({"total": 640, "trainable": 320}))
    return tmp_path


def test_stock_reads_the_counters_under_its_own_name(written):
    """Stock beside: an explicit resume restores them only where the reader's name is the writer's (0.16 on)."""
    restored, _ = _on_train_begin(written, 5, held=str(written / "checkpoint-5"))
    if tokens_per_second.TOKENS_STATE_FILE == _written_name():
        assert restored == {"total": 640, "trainable": 320}
    else:  # 0.13.2 to 0.15.0: "tokens_state." written, "tokens_state.json" read: restarted at zero
        assert restored == {}


def test_patched_reads_the_counters_the_trainer_wrote_explicit_and_auto(written):
    reader_name = tokens_per_second.TOKENS_STATE_FILE
    axolotl_savefix.apply()
    import axolotl.core.builders.base  # noqa: F401 - the builder's part (and the callback's) is applied on its import

    assert tokens_per_second.TOKENS_STATE_FILE == _written_name()
    assert _on_train_begin(written, 5, held=str(written / "checkpoint-5"))[0] == {"total": 640, "trainable": 320}
    assert _on_train_begin(written, 5)[0] == {"total": 640, "trainable": 320}  # auto-resume (issue 3940 too)
    backports._token_state_file()  # again: nothing more to patch
    axolotl_savefix.revert()
    assert tokens_per_second.TOKENS_STATE_FILE == reader_name
