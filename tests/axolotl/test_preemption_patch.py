"""The preemption patch on the installed Axolotl: its targets, its keys, its handler (no training)."""

import os
import signal

import axolotl.train as axolotl_train
import pytest
import transformers.trainer as hf_trainer
from axolotl.core.builders.base import TrainerBuilderBase  # noqa: F401 - the builder's hook patches rotation
from axolotl.utils.dict import DictDefault

import axolotl_savefix
from axolotl_savefix import SaveFixConfigError
from axolotl_savefix._infra import signals, targets
from axolotl_savefix.rules import keys
from axolotl_savefix.seams import preemption


def _rotation():
    """Transformers' rotation: the module function from 5.3, ``Trainer._rotate_checkpoints`` before."""
    return getattr(hf_trainer, "rotate_checkpoints", None) or hf_trainer.Trainer.__dict__["_rotate_checkpoints"]


def test_apply_patches_the_signal_handler_execute_training_and_rotation_and_revert_restores_them():
    before = (axolotl_train.setup_signal_handler, axolotl_train.execute_training, _rotation())
    axolotl_savefix.apply()
    after = (axolotl_train.setup_signal_handler, axolotl_train.execute_training, _rotation())
    assert all(a is not b for a, b in zip(after, before, strict=True))
    axolotl_savefix.revert()
    restored = (axolotl_train.setup_signal_handler, axolotl_train.execute_training, _rotation())
    assert all(a is b for a, b in zip(restored, before, strict=True))


def test_the_knob_leaves_stock_signal_handling():
    before = axolotl_train.setup_signal_handler
    axolotl_savefix.apply(preemption=False)
    assert axolotl_train.setup_signal_handler is before


@pytest.mark.parametrize(("value", "expected"), [("SIGUSR1", signal.SIGUSR1), ("usr2", signal.SIGUSR2), (10, signal.SIGUSR1)])
def test_signal_key_accepts_names_and_numbers(value, expected):
    assert keys.parse_signal(value) == expected


@pytest.mark.parametrize("value", ["SIGNOPE", "SIGKILL", 9, True])
def test_signal_key_refuses_unknown_and_uncatchable_signals_naming_the_key(value):
    with pytest.raises(SaveFixConfigError, match="savefix_preemption_signal"):
        keys.parse_signal(value)


@pytest.mark.parametrize("value", [0, -5, "soon"])
def test_grace_key_refuses_what_is_not_seconds_above_zero(value):
    with pytest.raises(SaveFixConfigError, match="savefix_preemption_grace"):
        keys.grace_seconds(DictDefault({"savefix_preemption_grace": value}))


def test_the_handler_only_records_and_uninstall_gives_back_the_previous_handler():
    previous = signal.getsignal(signal.SIGUSR1)
    signals.install([signal.SIGUSR1], grace=None)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received() == signal.SIGUSR1
        assert signals.exit_status(signals.received()) == 138
    finally:
        signals.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_rotation_never_counts_a_preemption_checkpoint_and_retires_it_once_superseded(tmp_path):
    """Issue 37: deleted only where its record proves the notice save made the folder; else un-marked, kept."""
    import json

    def checkpoint(step, marked=None):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if marked is not None:
            (folder / preemption.PREEMPTION).write_text(json.dumps({"global_step": step, "fresh": marked}))

    for step in (8, 15):
        checkpoint(step)
    checkpoint(19, marked=True)
    assert preemption.remove_superseded(tmp_path) == []  # the newest: kept
    checkpoint(20, marked=False)  # a notice save into a folder that was there before its run
    checkpoint(23)
    assert [p.name for p in preemption.remove_superseded(tmp_path)] == ["checkpoint-19"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-15", "checkpoint-20", "checkpoint-23", "checkpoint-8"]
    assert not (tmp_path / "checkpoint-20" / preemption.PREEMPTION).exists()  # an ordinary checkpoint now: rotation counts it
    assert preemption.marked(tmp_path) == []


def test_before_transformers_5_3_rotation_is_the_trainer_method_and_never_counts_a_preemption_checkpoint(tmp_path, monkeypatch):
    """Transformers 4.57 to 5.2 (Axolotl 0.13.2, 0.14.0) rotate in ``Trainer._rotate_checkpoints``, limit in ``args``."""
    import json
    from types import SimpleNamespace

    seen = []

    def _rotate_checkpoints(self, use_mtime=False, output_dir=None):  # the shape of 4.57.6's method
        seen.append((self.args.save_total_limit, use_mtime, output_dir))

    import dataclasses

    monkeypatch.delattr(hf_trainer, "rotate_checkpoints", raising=False)  # absent before 5.3 already
    monkeypatch.setattr(hf_trainer.Trainer, "_rotate_checkpoints", _rotate_checkpoints, raising=False)
    for key, present in (("rotate_checkpoints", False), ("rotate_method", True)):  # the table, as on 4.57
        monkeypatch.setitem(targets.TARGETS, key, dataclasses.replace(targets.TARGETS[key], when=lambda present=present: present))
    for step, marked in ((8, False), (15, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if marked:
            (folder / preemption.PREEMPTION).write_text("{}")
    trainer = SimpleNamespace(args=SimpleNamespace(save_total_limit=2, output_dir=str(tmp_path)))
    try:
        axolotl_savefix.apply()  # the builder is imported: its targets, rotation's among them, are wrapped now
        assert hf_trainer.Trainer._rotate_checkpoints is not _rotate_checkpoints
        hf_trainer.Trainer._rotate_checkpoints(trainer, True, str(tmp_path))
        hf_trainer.Trainer._rotate_checkpoints(trainer, False)
        trainer.args.save_total_limit = 0  # keep all: passed through untouched
        hf_trainer.Trainer._rotate_checkpoints(trainer)
    finally:
        axolotl_savefix.revert()
    # the marked checkpoint-15 is the newest (not superseded): rotation sees one more allowed, then the limit again
    assert seen == [(3, True, str(tmp_path)), (3, False, None), (0, False, None)]
    assert hf_trainer.Trainer._rotate_checkpoints is _rotate_checkpoints


SCRIPT = """
import os, signal, sys, time
from axolotl_savefix._infra import signals
signals.install([signal.SIGTERM], grace={grace})
os.kill(os.getpid(), signal.SIGTERM)
{second}
time.sleep(30)
sys.exit(0)
"""


@pytest.mark.preemption  # a fresh interpreter per case (about 18 s each): `nox -s preemption`, not `tests`
@pytest.mark.parametrize(
    ("grace", "second", "why"),
    [
        # later than the repeat window (a forwarded copy of the same notice is not a second one)
        (None, "time.sleep(signals.REPEAT_SECONDS + 0.5); os.kill(os.getpid(), signal.SIGTERM)", "a second signal (SIGTERM)"),
        (0.2, "", "savefix_preemption_grace (0.2 s) passed since SIGTERM"),
    ],
)
def test_a_second_signal_or_the_grace_deadline_exits_at_once_with_the_preempted_status(grace, second, why):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(grace=grace, second=second)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 143, proc.stderr  # exit 0 would mean the 30 s sleep ran out
    assert why in proc.stderr and "exiting now with status 143" in proc.stderr


def test_the_same_signal_again_within_the_repeat_window_is_the_same_notice_and_later_exits_at_once(monkeypatch):
    """srun and torchrun forward the notice a scheduler already sent every process: two SIGTERMs in milliseconds."""
    exits = []
    monkeypatch.setattr(signals, "_exit_now", lambda signum, why: exits.append((signum, why)))
    signals.install([signal.SIGTERM], None)
    try:
        signals._handler(signal.SIGTERM, None)
        signals._handler(signal.SIGTERM, None)  # forwarded: the same notice
        assert exits == [] and signals.received() == signal.SIGTERM
        signals._handler(signal.SIGINT, None)  # another signal: at once
        assert [s for s, _ in exits] == [signal.SIGINT]
        signals._notice.received_at -= signals.REPEAT_SECONDS + 0.1
        signals._handler(signal.SIGTERM, None)  # the same signal, later: a person's second notice
        assert [s for s, _ in exits] == [signal.SIGINT, signal.SIGTERM]
    finally:
        signals.uninstall()


def test_a_dataloader_worker_ignores_the_notice_signals_once_the_parent_armed_them():
    """The worker side of the fix, in a real forked DataLoader worker (torch's own worker loop)."""
    import torch

    class Dispositions(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.tensor([signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGTERM, signal.SIGINT)])

    def in_worker():
        loader = torch.utils.data.DataLoader(Dispositions(), num_workers=1, multiprocessing_context="fork")
        return next(iter(loader))[0].tolist()

    # a known start: a shell's background job (`cmd &`, nohup) inherits SIGINT ignored, which would hide the result
    inherited = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler))}
    try:
        axolotl_savefix.apply()
        try:
            assert in_worker() == [False, False]  # not armed yet: torch's own worker handlers
            signals.install([signal.SIGTERM, signal.SIGINT], None)
            assert in_worker() == [True, True]
        finally:
            signals.uninstall()
            axolotl_savefix.revert()
        assert in_worker() == [False, False]
    finally:
        for sig, handler in inherited.items():
            signal.signal(sig, handler)


FAILING_RUN = """
import signal, sys, torch
import axolotl_savefix
from axolotl_savefix._infra import signals
axolotl_savefix.apply()
if sys.argv[1] == "armed":
    signals.install([signal.SIGTERM, signal.SIGINT], None)
class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 100
    def __getitem__(self, i):
        return i
batches = iter(torch.utils.data.DataLoader(Items(), num_workers=2, multiprocessing_context="fork"))
next(batches)
raise RuntimeError("a peer rank died in a collective")  # the iterator and its workers still alive at exit
"""


@pytest.mark.parametrize("armed", [False, True], ids=["stock", "armed"])
def test_a_run_that_fails_with_its_dataloader_workers_alive_exits_with_the_error(armed):
    """Workers forked while armed ignore SIGTERM, which multiprocessing's exit sends them before joining for ever.

    Found on two "nodes": one killed during a save, the other's rank failed in the save's barrier and
    then waited at exit on its quiet workers, until the job's time limit. Stock exits with the error.
    """
    import subprocess
    import sys

    argv = [sys.executable, "-c", FAILING_RUN, "armed" if armed else "stock"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers: the session this test started
        _, stderr = proc.communicate()
        raise AssertionError(f"the failed run did not exit (a hang at interpreter exit):\n{stderr[-3000:]}") from None
    assert proc.returncode == 1, stderr[-3000:]
    assert "RuntimeError: a peer rank died in a collective" in stderr
    assert "killed by signal" not in stderr and "Exception ignored in atexit" not in stderr, stderr[-3000:]


def test_the_exit_line_says_saved_only_for_a_complete_checkpoint(tmp_path):
    import json

    folder = tmp_path / "checkpoint-20"
    folder.mkdir()
    (folder / preemption.PREEMPTION).write_text(json.dumps({"global_step": 20}))  # what a dropped save leaves
    line = preemption.exit_line(signal.SIGTERM, 20, tmp_path, 1.0)
    assert "checkpoint-20 is NOT complete (lacks" in line and " saved" not in line
    assert "starts again from step 0" in line
    gone = preemption.exit_line(signal.SIGTERM, 25, tmp_path, None)
    assert "checkpoint-25 is NOT complete" in gone


def test_enable_jit_checkpoint_is_taken_over_by_the_preemption_notice(tmp_path):
    """Transformers' JIT checkpoint (its own SIGTERM handler and callback) on a real Trainer: ours decides."""
    import torch
    from transformers import Trainer, TrainingArguments

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def forward(self, x=None, labels=None):
            return {"loss": self.w(x).sum()}

    import dataclasses

    before = signal.getsignal(signal.SIGTERM)
    if "enable_jit_checkpoint" not in {f.name for f in dataclasses.fields(TrainingArguments)}:
        # this Transformers (before 5.x) has no JIT checkpoint: nothing to take over, the SIGTERM handler is ours alone
        trainer = Trainer(model=Tiny(), args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
        try:
            signals.install([signal.SIGTERM], None)
            assert preemption.take_over_jit_checkpoint(trainer) is False
            assert signal.getsignal(signal.SIGTERM) == signals._handler
        finally:
            signals.uninstall()
            signal.signal(signal.SIGTERM, before)
        return
    args = TrainingArguments(output_dir=str(tmp_path), enable_jit_checkpoint=True, report_to=[], use_cpu=True)
    trainer = Trainer(model=Tiny(), args=args)
    try:
        names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
        assert "JITCheckpointCallback" in names and signal.getsignal(signal.SIGTERM) != before
        signals.install([signal.SIGTERM], None)  # Axolotl's setup_signal_handler runs after the trainer is built
        assert preemption.take_over_jit_checkpoint(trainer) is True
        names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
        assert "JITCheckpointCallback" not in names and trainer.args.enable_jit_checkpoint is False
        assert signal.getsignal(signal.SIGTERM) == signals._handler
        assert preemption.take_over_jit_checkpoint(trainer) is False  # off now: nothing to do
    finally:
        signals.uninstall()
        signal.signal(signal.SIGTERM, before)
