"""Test-only Axolotl plugin: SIGKILL the training process at an exact point of one checkpoint save.

``SAVEFIX_KILL_AT=STEP:POINT[:RANK]`` (unset: the plugin does nothing, so the
same config trains normally on the next run). POINT is where the save of
``checkpoint-STEP`` is cut:

``weights``       model.safetensors half written (the weights are written, cut to half, then the kill)
``optimizer``     optimizer.pt half written
``before_state``  everything but trainer_state.json written (the kill instead of that write)
``after_state``   trainer_state.json written, the kill right after it (the checkpoint is complete)
``rng``           rng_state_RANK.pth half written, in rank RANK only (a multi-process run)
``rotation``      checkpoint-STEP written whole, then rotation's ``shutil.rmtree`` of the oldest checkpoint
                  cut half way: the first half of its files, in the order ``rmtree`` meets them
                  (``os.scandir``), deleted, then the kill (needs a ``save_total_limit``)
``zero_shard``    DeepSpeed ZeRO: ``global_stepSTEP/zero_pp_rank_RANK_mp_rank_00_optim_states.pt`` written
                  whole, then the kill, in rank RANK only; with RANK 0, before it writes ``latest``
                  (DeepSpeed's ``save_checkpoint`` writes ``latest`` on rank 0 right after its own shard)

"Half written" is what a kill during a write leaves: the file exists, truncated.
The kill is a real ``SIGKILL`` of the process by itself, after a line
``[kill_shim] SIGKILL ...`` is flushed, so it lands exactly where it says: no
sleep, no race. Registered in every rank (Axolotl loads plugins per process).
Never shipped; used by tests/e2e/test_preemption.py.
"""

import os
import shutil
import signal
import sys
from pathlib import Path

import torch
import transformers.modeling_utils as modeling_utils
from axolotl.integrations.base import BasePlugin
from transformers.trainer_callback import TrainerState


def _spec():
    value = os.environ.get("SAVEFIX_KILL_AT")
    if not value:
        return None
    step, point, *rank = value.split(":")
    return int(step), point, int(rank[0]) if rank else None


def _kill(what: str, path: str | None = None) -> None:
    if path is not None:  # what a write cut by the kill leaves: the first half of the file
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    print(f"[kill_shim] SIGKILL {what} (rank {os.environ.get('RANK', '0')})", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _in_checkpoint(path, step: int, name: str) -> bool:
    p = Path(str(path))
    return p.parent.name == f"checkpoint-{step}" and p.name == name


class KillShim(BasePlugin):
    def register(self, cfg):  # noqa: ARG002
        spec = _spec()
        if spec is None:
            return
        step, point, rank = spec
        if rank is not None and int(os.environ.get("RANK", "0")) != rank:
            return

        if point == "weights":
            original_save_file = modeling_utils.safe_save_file

            def safe_save_file(tensors, filename, *args, **kwargs):
                result = original_save_file(tensors, filename, *args, **kwargs)
                if _in_checkpoint(filename, step, "model.safetensors"):
                    _kill(f"while writing checkpoint-{step}/model.safetensors", filename)
                return result

            modeling_utils.safe_save_file = safe_save_file

        elif point in ("optimizer", "rng"):
            name = "optimizer.pt" if point == "optimizer" else f"rng_state_{rank}.pth"
            original_save = torch.save

            def save(obj, f, *args, **kwargs):
                result = original_save(obj, f, *args, **kwargs)
                if isinstance(f, (str, os.PathLike)) and _in_checkpoint(f, step, name):
                    _kill(f"while writing checkpoint-{step}/{name}", str(f))
                return result

            torch.save = save

        elif point == "zero_shard":
            shard = f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            original_zero_save = torch.save

            def zero_save(obj, f, *args, **kwargs):
                result = original_zero_save(obj, f, *args, **kwargs)
                p = Path(str(f)) if isinstance(f, (str, os.PathLike)) else None
                if p is not None and p.name == shard and p.parent.name == f"global_step{step}":
                    if p.parent.parent.name == f"checkpoint-{step}":
                        _kill(f"after writing checkpoint-{step}/global_step{step}/{shard}, before latest")
                return result

            torch.save = zero_save
        elif point in ("before_state", "after_state"):
            original_save_to_json = TrainerState.save_to_json

            def save_to_json(self, json_path):
                cut = _in_checkpoint(json_path, step, "trainer_state.json")
                if cut and point == "before_state":
                    _kill(f"just before writing checkpoint-{step}/trainer_state.json")
                result = original_save_to_json(self, json_path)
                if cut:
                    _kill(f"just after writing checkpoint-{step}/trainer_state.json")
                return result

            TrainerState.save_to_json = save_to_json
        elif point == "rotation":
            original_rmtree = shutil.rmtree

            def rmtree(path, *args, **kwargs):
                folder = Path(str(path))
                newest = max(
                    (int(p.name.split("-")[1]) for p in folder.parent.glob("checkpoint-*") if p.name.split("-")[1].isdigit()),
                    default=None,
                )
                if folder.name.startswith("checkpoint-") and newest == step and folder.name != f"checkpoint-{step}":
                    files = [e.path for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
                    for file in files[: max(1, len(files) // 2)]:
                        os.unlink(file)
                    names = ", ".join(Path(f).name for f in files[: max(1, len(files) // 2)])
                    _kill(f"in rotation after checkpoint-{step}: {folder.name} half deleted ({names})")
                return original_rmtree(path, *args, **kwargs)

            shutil.rmtree = rmtree
        else:
            raise ValueError(f"SAVEFIX_KILL_AT: unknown point {point!r}")
