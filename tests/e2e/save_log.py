"""Test-only Axolotl plugin: log one line per checkpoint save, on rank 0. Never shipped.

The harness reads the saved steps from Transformers' ``Saving model checkpoint to
.../checkpoint-N`` log line. FSDP's sharded saves and TRL's preference trainers (DPO) do not
log that line, so runs of theirs add this plugin. Its callback writes a line of the same shape
after each save to ``OUTPUT_DIR/save_log.txt`` (a file, not the console: the output of two
ranks interleaves there, mid-line), which ``harness.observe`` reads with the console log. The
file starts empty at each train begin.
"""

from pathlib import Path

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

FILE = "save_log.txt"


class _SaveLogCallback(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (Path(args.output_dir) / FILE).write_text("")
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            with (Path(args.output_dir) / FILE).open("a") as f:
                f.write(f"[save_log] saved checkpoint to {args.output_dir}/checkpoint-{state.global_step}\n")
        return control


class SaveLog(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):  # noqa: ARG002
        return [_SaveLogCallback()]
