"""Test-only Axolotl plugin for tests/e2e/chaos.py: trace the checkpoint windows, and SIGKILL at the n-th hooked call.

Always on when ``SAVEFIX_CHAOS_TRACE`` names a folder: each rank appends one line per event to
``trace-RANK.log`` there (``TIME enter|exit|call|KILL PHASE DETAIL``), so the parent can tell in
which window a kill from its timer landed (the last ``enter`` without its ``exit``). Windows:

``save``       ``Trainer._save_checkpoint`` (``checkpoint-N``) and Axolotl's ``save_trained_model`` (``final``)
``rotation``   Transformers' ``rotate_checkpoints`` (its ``shutil.rmtree`` of the oldest checkpoints)
``set-aside``  ``axolotl_savefix.seams.incomplete_checkpoints.set_aside_incomplete`` (its moves and deletes)

Hooked calls, counted per window kind in this process only: in ``save``, ``torch.save``,
``safetensors`` ``safe_save_file``, ``TrainerState.save_to_json`` and
``torch.distributed.checkpoint.save`` (FSDP's sharded state); in ``rotation``, ``shutil.rmtree``;
in ``set-aside``, ``os.rename`` / ``os.replace`` and ``shutil.rmtree``.

``SAVEFIX_CHAOS_KILL=PHASE:N:MODE:RANK:SEED`` makes rank RANK SIGKILL itself at the N-th hooked
call of PHASE. MODE: ``before`` (instead of the call), ``after`` (right after it), ``cut``
(what a kill during the call leaves: a written file truncated to half; a sharded save without
its ``.metadata``, which is written last; an ``rmtree`` that deleted a seeded half of the files).
A line ``[chaos_shim] SIGKILL ...`` is flushed to stderr and the trace first. Unset: nothing is
killed. Registered in every rank (Axolotl loads plugins per process). Never shipped.
"""

import functools
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import transformers.modeling_utils as modeling_utils
import transformers.trainer as hf_trainer
from axolotl.integrations.base import BasePlugin
from transformers.trainer_callback import TrainerState

RANK = int(os.environ.get("RANK", "0") or 0)
_open: list[tuple[str, str]] = []  # the windows this process is inside now, innermost last
_calls: dict[str, int] = {}
_spec: dict = {}
_real_rmtree = shutil.rmtree
_real_rename = os.rename
_real_replace = os.replace


def _trace(kind: str, phase: str, detail: str) -> None:
    folder = os.environ.get("SAVEFIX_CHAOS_TRACE")
    if folder:
        with open(Path(folder) / f"trace-{RANK}.log", "a") as f:
            f.write(f"{time.time():.3f} {kind} {phase} {detail}\n")


def _kill(phase: str, detail: str) -> None:
    _trace("KILL", phase, detail)
    print(f"[chaos_shim] SIGKILL in {phase}: {detail} (rank {RANK})", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _window(phase: str, detail):
    """Decorator: trace entering and leaving ``phase`` around the call; ``detail(args)`` names it."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            name = detail(args, kwargs)
            _open.append((phase, name))
            _trace("enter", phase, name)
            try:
                return fn(*args, **kwargs)
            finally:
                _open.pop()
                _trace("exit", phase, name)

        return inner

    return wrap


def _current() -> tuple[str, str] | None:
    return _open[-1] if _open else None


def _partial_delete(path) -> None:
    """What a kill during ``rmtree(path)`` leaves: a seeded half of its files gone, the folder still there."""
    files = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    random.Random(f"{_spec['seed']}:{path}").shuffle(files)
    for name in files[: max(1, len(files) // 2)]:
        os.unlink(name)


def _cut_file(target) -> None:
    if isinstance(target, (str, os.PathLike)) and os.path.isfile(target):
        size = os.path.getsize(target)
        with open(target, "r+b") as f:
            f.truncate(size // 2)


def _cut_sharded(kwargs) -> None:
    writer = kwargs.get("storage_writer")
    folder = kwargs.get("checkpoint_id") or getattr(writer, "path", None)
    if folder is not None and (Path(str(folder)) / ".metadata").is_file():
        os.unlink(Path(str(folder)) / ".metadata")


def _hooked(phases: tuple[str, ...], what: str, target_of, cut):
    """Wrap a writing or deleting call: trace it inside a window of ``phases``, and kill at the chosen one."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            window = _current()
            if window is None or window[0] not in phases:
                return fn(*args, **kwargs)
            phase, name = window
            target = target_of(args, kwargs)
            detail = f"{name} {what} {target}"
            _calls[phase] = _calls.get(phase, 0) + 1
            _trace("call", phase, detail)
            chosen = _spec and _spec["phase"] == phase and _spec["n"] == _calls[phase]
            if chosen and _spec["mode"] == "before":
                _kill(phase, f"before {detail}")
            if chosen and _spec["mode"] == "cut" and cut is not None:
                cut(fn, args, kwargs)
                _kill(phase, f"cut {detail}")
            result = fn(*args, **kwargs)
            if chosen:
                _kill(phase, f"after {detail}")
            return result

        return inner

    return wrap


def _cut_by_writing_half(fn, args, kwargs):
    fn(*args, **kwargs)
    _cut_file(args[1] if len(args) > 1 else kwargs.get("f") or kwargs.get("filename") or kwargs.get("json_path"))


def _cut_sharded_save(fn, args, kwargs):
    fn(*args, **kwargs)
    _cut_sharded(kwargs)


def _cut_rmtree(fn, args, kwargs):  # noqa: ARG001
    _partial_delete(args[0] if args else kwargs["path"])


def _arg(i, key):
    return lambda args, kwargs: args[i] if len(args) > i else kwargs.get(key)


def _install(patched: bool) -> None:
    import axolotl.train as ax_train
    import torch.distributed.checkpoint as dcp

    # windows
    hf_trainer.Trainer._save_checkpoint = _window("save", lambda a, k: f"checkpoint-{a[0].state.global_step}")(
        hf_trainer.Trainer._save_checkpoint
    )
    ax_train.save_trained_model = _window("save", lambda a, k: "final")(ax_train.save_trained_model)
    hf_trainer.rotate_checkpoints = _window("rotation", lambda a, k: "rotate")(hf_trainer.rotate_checkpoints)
    if patched:  # stock runs have no set-aside
        import axolotl_savefix.seams.incomplete_checkpoints as resume

        resume.set_aside_incomplete = _window("set-aside", lambda a, k: "scan")(resume.set_aside_incomplete)
    # calls
    save = ("save",)
    torch.save = _hooked(save, "torch.save", _arg(1, "f"), _cut_by_writing_half)(torch.save)
    modeling_utils.safe_save_file = _hooked(save, "safe_save_file", _arg(1, "filename"), _cut_by_writing_half)(
        modeling_utils.safe_save_file
    )
    TrainerState.save_to_json = _hooked(save, "save_to_json", _arg(1, "json_path"), _cut_by_writing_half)(TrainerState.save_to_json)
    dcp.save = _hooked(save, "dcp.save", lambda a, k: getattr(k.get("storage_writer"), "path", None), _cut_sharded_save)(dcp.save)
    shutil.rmtree = _hooked(("rotation", "set-aside"), "rmtree", _arg(0, "path"), _cut_rmtree)(_real_rmtree)
    os.rename = _hooked(("set-aside",), "rename", _arg(0, "src"), None)(_real_rename)
    os.replace = _hooked(("set-aside",), "replace", _arg(0, "src"), None)(_real_replace)


_installed = False


class ChaosShim(BasePlugin):
    def register(self, cfg):
        global _installed
        value = os.environ.get("SAVEFIX_CHAOS_KILL")
        if value:
            phase, n, mode, rank, seed = value.split(":")
            if int(rank) == RANK:
                _spec.update(phase=phase, n=int(n), mode=mode, seed=seed)
        if not _installed:
            _installed = True
            _install(any("axolotl_savefix" in str(p) for p in (cfg.get("plugins") or [])))
            _trace("start", "-", f"pid {os.getpid()} kill {value or 'none'}")
