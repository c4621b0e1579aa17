"""Test-only Axolotl plugin: where a run's time goes, phase by phase. Never shipped; used by tests/e2e/bench.py.

``SAVEFIX_PHASE_FILE=PATH`` (unset: the plugin does nothing): one JSON object per line is appended
to PATH, each with ``mark`` and the ``time.time()`` / ``time.monotonic()`` of that moment. The
benchmark loads the plugin in stock and patched runs alike (listed first, so its hooks run before
the package's), so whatever it costs cancels in the ratio.

Marks, in run order: ``register`` (plugins registered, inside ``load_cfg``), ``config`` (the config
is loaded and validated: Axolotl's ``load_datasets`` plugin hook, right before the data),
``data`` (``pre_model_load``: the data set is ready), ``model`` (``post_model_load``),
``trainer`` (``post_trainer_create``), ``train_begin`` / ``train_end`` (the trainer's callbacks:
``train_end`` carries ``train_runtime`` and ``global_step``), ``save`` (one per checkpoint: the
seconds of ``Trainer._save_checkpoint`` plus the ``on_save`` callbacks, every callback's own
``on_save`` included), ``post_train`` (Axolotl's last hook of ``train``). The process start and
its exit are taken by the parent (``SAVEFIX_PHASE_T0``, a ``time.time()``, copied into ``register``).

``train_begin`` also records facts about the process the loop runs in: torch's intra-op and
inter-op thread counts, the OpenMP/MKL environment, the callbacks in order, whether the
package is applied, the number of ``sys.meta_path`` finders and ``gc`` thresholds.

No per-step work: the two timed methods run once per save. ``SAVEFIX_PHASE_CALLBACKS=1`` (for
the investigation, not the benchmark) also times every callback's ``on_step_end`` (per-step
work: the totals come with ``train_end``).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

ENV_FILE = "SAVEFIX_PHASE_FILE"
ENV_T0 = "SAVEFIX_PHASE_T0"
ENV_CALLBACKS = "SAVEFIX_PHASE_CALLBACKS"
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "KMP_AFFINITY",
    "OMP_PROC_BIND",
)


PATCHING = "axolotl_savefix._infra.patching"


def mark(name: str, **data: Any) -> None:
    path = os.environ.get(ENV_FILE)
    if not path or int(os.environ.get("RANK", "0") or 0) != 0:
        return
    line = {"mark": name, "time": time.time(), "monotonic": time.monotonic(), **data}
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")


def process_facts(trainer: Any = None) -> dict[str, Any]:
    """Thread pools and what could change them, read once (both modes)."""
    import torch

    facts: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env": {k: os.environ.get(k) for k in THREAD_ENV},
        "meta_path": [type(f).__name__ for f in sys.meta_path],
        "gc_threshold": list(gc.get_threshold()),
        "gc_counts": list(gc.get_count()),
        "gc_objects": len(gc.get_objects()),
        "modules": len(sys.modules),
        "python_threads": threading.active_count(),
        "sigterm_handler": getattr(signal.getsignal(signal.SIGTERM), "__qualname__", str(signal.getsignal(signal.SIGTERM))),
        "savefix_applied": PATCHING in sys.modules and sys.modules[PATCHING].is_patched(),
    }
    if trainer is not None:
        facts["callbacks"] = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    return facts


class _Timed:
    """Seconds spent in each callback's ``on_step_end`` (opt-in: ``SAVEFIX_PHASE_CALLBACKS=1``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, callback: Any) -> None:
        name = type(callback).__name__
        original = callback.on_step_end
        self.seconds.setdefault(name, 0.0)

        def on_step_end(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        callback.on_step_end = on_step_end


class _PhaseCallback(TrainerCallback):
    def __init__(self) -> None:
        self.trainer: Any = None
        self.timed: _Timed | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ARG002
        facts = process_facts(self.trainer)
        if os.environ.get(ENV_CALLBACKS) == "1" and self.trainer is not None:
            self.timed = _Timed()
            for callback in self.trainer.callback_handler.callbacks:
                self.timed.wrap(callback)
        mark("train_begin", global_step=state.global_step, max_steps=state.max_steps, **facts)
        return control

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ARG002
        runtime = next((e["train_runtime"] for e in reversed(state.log_history) if "train_runtime" in e), None)
        extra = {"on_step_end_s": self.timed.seconds} if self.timed else {}
        mark(
            "train_end",
            train_runtime=runtime,
            global_step=state.global_step,
            modules=len(sys.modules),  # minus train_begin's: what imported lazily during training
            threads=threading.active_count(),
            **extra,
        )
        return control


class PhaseShim(BasePlugin):
    def __init__(self) -> None:
        super().__init__()
        self.callback = _PhaseCallback()

    def register(self, cfg):  # noqa: ARG002
        t0 = os.environ.get(ENV_T0)
        mark("register", process_start=float(t0) if t0 else None, pid=os.getpid())

    def load_datasets(self, cfg, preprocess=False):  # noqa: ARG002
        mark("config")
        return None  # Axolotl loads the data itself

    def pre_model_load(self, cfg):  # noqa: ARG002
        mark("data")

    def post_model_load(self, cfg, model):  # noqa: ARG002
        mark("model")

    def post_trainer_create(self, cfg, trainer):  # noqa: ARG002
        self.callback.trainer = trainer
        save, handler = trainer._save_checkpoint, trainer.callback_handler
        on_save = handler.on_save
        pending: dict[str, float] = {}

        def _save_checkpoint(*args, **kwargs):
            pending["start"] = time.perf_counter()
            return save(*args, **kwargs)

        def on_save_timed(args, state, control):
            try:
                return on_save(args, state, control)
            finally:
                if "start" in pending:
                    mark("save", global_step=state.global_step, seconds=time.perf_counter() - pending.pop("start"))

        trainer._save_checkpoint = _save_checkpoint  # the instance's: the class's own (patched or not) inside
        handler.on_save = on_save_timed
        mark("trainer")

    def add_callbacks_post_trainer(self, cfg, trainer):  # noqa: ARG002
        return [self.callback]

    def post_train(self, cfg, model):  # noqa: ARG002
        mark("post_train")  # twice: after trainer.train() and at the end of axolotl.train.train
