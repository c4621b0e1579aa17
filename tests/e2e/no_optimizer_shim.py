"""Test-only Axolotl plugin: the trainer cannot save its optimizer, as FSDP with torchao's 8-bit/4-bit optimizers.

Transformers' ``Trainer._save_optimizer_and_scheduler`` raises ``NotImplementedError`` (what
torch.distributed's state-dict gathering raises for those optimizer states, Axolotl issues 2744
and 2701). Axolotl's ``CheckpointSaveMixin._save_optimizer_and_scheduler`` catches it, warns, and
the checkpoint is written without ``optimizer.pt`` and ``scheduler.pt``: Axolotl's own fallback, on
purpose (PR 2773). ``SAVEFIX_NO_OPTIMIZER=0`` leaves the optimizer save alone.

``SAVEFIX_BEGIN_SNAPSHOT=PATH``: at train begin (after the resume decision, before the first step),
write to PATH, as JSON, every file under ``output_dir``'s ``checkpoint-*`` and ``incomplete-*``
folders with its sha256: what the start of a run left on disk.

Registered in every rank. Never shipped; used by tests/e2e/test_never_destroy.py.
"""

import hashlib
import json
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from transformers import Trainer, TrainerCallback


def _cannot_save(self, output_dir):  # noqa: ARG001 - Trainer._save_optimizer_and_scheduler's signature
    raise NotImplementedError("this optimizer's state cannot be gathered for saving (test shim: no_optimizer_shim)")


def snapshot(output_dir) -> dict[str, str]:
    out = Path(output_dir)
    found = {}
    for path in sorted(out.rglob("*")) if out.is_dir() else []:
        top = path.relative_to(out).parts[0]
        if path.is_file() and top.startswith(("checkpoint-", "incomplete-")):
            found[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


class _Snapshot(TrainerCallback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ARG002
        if int(os.environ.get("RANK", "0")) == 0:
            Path(self.path).write_text(json.dumps(snapshot(args.output_dir)))
        return control


class NoOptimizerShim(BasePlugin):
    def register(self, cfg):  # noqa: ARG002 - BasePlugin's hook
        if os.environ.get("SAVEFIX_NO_OPTIMIZER", "1") != "0":
            Trainer._save_optimizer_and_scheduler = _cannot_save

    def add_callbacks_post_trainer(self, cfg, trainer):  # noqa: ARG002
        path = os.environ.get("SAVEFIX_BEGIN_SNAPSHOT")
        return [_Snapshot(path)] if path else []
