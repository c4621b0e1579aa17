"""Test-only Axolotl plugin: at train end, fill the disk of ``output_dir`` (another writer on a shared disk). Never shipped.

``SAVEFIX_FILL_LEAVE=BYTES`` (unset: the plugin does nothing): at ``on_train_end`` (rank 0),
which Transformers calls before Axolotl writes the final model, a file ``filler`` is
written next to ``output_dir`` (same file system, outside the run's folder) so that
``BYTES`` stay free. The run then meets a full disk at its final model save.
"""

import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

FILLER = "filler"


def fill(output_dir: str, leave: int) -> Path:
    """Write ``output_dir``'s sibling ``filler`` so that about ``leave`` bytes stay free; its path."""
    path = Path(output_dir).parent / FILLER
    stats = os.statvfs(output_dir)
    free = stats.f_bavail * stats.f_frsize
    with path.open("ab") as f:
        f.write(b"\0" * max(0, free - leave))
    return path


class _FillAtTrainEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        leave = os.environ.get("SAVEFIX_FILL_LEAVE")
        if leave and state.is_world_process_zero:
            path = fill(args.output_dir, int(leave))
            print(f"[fill_shim] {path} written: about {leave} bytes left free before the final model save", flush=True)
        return control


class FillShim(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):  # noqa: ARG002
        return [_FillAtTrainEnd()]
