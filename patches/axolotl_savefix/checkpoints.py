"""Is a ``checkpoint-N`` folder complete? Pure: files only, no Axolotl, no torch.

Transformers writes a checkpoint in place (``Trainer._save_checkpoint``), in this
order: the weights (``save_model``), the optimizer and scheduler, the grad
scaler, each rank's RNG state, and last, on the main process,
``trainer_state.json``. A process killed anywhere before that last file leaves a
folder that resume cannot use. The rule, from that order:

1. ``trainer_state.json`` parses as JSON and its ``global_step`` is N. It is
   written last, so every file the main process writes before it is there.
2. Every weight, optimizer, scheduler and RNG file present is whole: a
   ``.safetensors`` file has a readable header and exactly the size the header
   says; a torch file (``.bin``, ``.pt``, ``.pth``) in the zip format of
   ``torch.save`` ends with the zip's central directory. A process killed while
   writing one leaves it truncated.
3. Sharded weights are all there: every shard a ``*.index.json`` lists exists,
   every ``pytorch_model_fsdp_*`` / ``optimizer_*`` folder (FSDP's
   ``SHARDED_STATE_DICT``, torch.distributed.checkpoint) has its ``.metadata``,
   which the coordinator writes after every rank wrote its part, and a DeepSpeed
   ``global_step*`` folder has the ``latest`` file DeepSpeed writes after its
   barrier.
4. Each rank's RNG state is there. Other ranks write ``rng_state_R.pth`` while
   the main process may already write ``trainer_state.json``, so rule 1 does not
   cover them: the world size and ``save_only_model`` of the run are recorded in
   ``trainer_state.json`` itself (``stateful_callbacks``, by the ``resume`` patch's
   callback), and a checkpoint with that record needs ``rng_state_0..W-1.pth``
   (``rng_state.pth`` for one process) unless it saved the model only.

Limits: a checkpoint written without the record (stock Axolotl, or before the
fix was enabled) is checked by rules 1 to 3 only, so a missing RNG file of
another rank is not seen there (Transformers then resumes with a fresh RNG for
that rank, and says so). A torch file in the legacy, non-zip format cannot be
checked for truncation and is taken as whole.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

PREFIX = "checkpoint-"
QUARANTINE_PREFIX = "incomplete-"  # outside the `checkpoint-*` names Axolotl and Transformers list
STATE = "trainer_state.json"
RECORD = "SaveFixCheckpointRecord"  # the callback whose state trainer_state.json carries
TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def step_of(path: Path) -> int | None:
    tail = path.name[len(PREFIX) :] if path.name.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() else None


def checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest step first (what Axolotl's resume lists)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX}*") if step_of(p) is not None and p.is_dir()]
    return sorted(found, key=lambda p: step_of(p) or 0)


def _safetensors_whole(path: Path) -> bool:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return False
            header = json.loads(f.read(header_len))
    except (OSError, ValueError):
        return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return size == 8 + header_len + max(ends, default=0)


def _torch_file_whole(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    if not magic:
        return False
    if magic != b"PK\x03\x04":
        return True  # legacy pickle format: cannot tell, taken as whole (see the module's limits)
    return zipfile.is_zipfile(path)


def _whole(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return _safetensors_whole(path)
    if path.suffix in TORCH_SUFFIXES:
        return _torch_file_whole(path)
    return True


def record(state: dict) -> dict | None:
    """The run's record in a parsed ``trainer_state.json``: ``{"world_size": W, "save_only_model": b}``."""
    stored = (state.get("stateful_callbacks") or {}).get(RECORD)
    if isinstance(stored, list):  # Transformers keeps a list when several instances are registered
        stored = stored[-1] if stored else None
    attributes = (stored or {}).get("attributes") if isinstance(stored, dict) else None
    return attributes if isinstance(attributes, dict) and "world_size" in attributes else None


GONE = "the folder (moved or deleted while being checked)"


def missing(path: str | os.PathLike[str]) -> list[str]:
    """What ``checkpoint-N`` at ``path`` lacks to be resumed from; empty when complete.

    A folder that disappears while being checked (another process set it aside) is incomplete.
    """
    try:
        return _missing(Path(path))
    except FileNotFoundError:
        return [GONE]


def _missing(folder: Path) -> list[str]:
    if not folder.is_dir():
        return [GONE]
    problems: list[str] = []
    state_file = folder / STATE
    state: dict = {}
    try:
        loaded = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{STATE} (never written: the save was cut before its end)")
    except (OSError, ValueError):
        problems.append(f"{STATE} (cut while being written)")
    else:
        step = step_of(folder)
        state = loaded if isinstance(loaded, dict) else {}
        if step is not None and state.get("global_step") != step:
            problems.append(f"{STATE} (global_step {state.get('global_step')}, not {step})")
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name != STATE and not _whole(file):
            problems.append(f"{file.name} (cut while being written)")
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError):
            problems.append(f"{index.name} (unreadable)")
            continue
        problems += [f"{shard} (listed in {index.name})" for shard in sorted(shards) if not (folder / shard).is_file()]
    for sharded in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sharded.name.startswith(("pytorch_model_fsdp_", "optimizer_", "model_fsdp_")):
            if not (sharded / ".metadata").is_file():
                problems.append(f"{sharded.name}/.metadata (a sharded save that did not finish)")
        elif sharded.name.startswith("global_step") and not (folder / "latest").is_file():
            problems.append(f"latest (DeepSpeed's {sharded.name} did not finish)")
    run = record(state)
    if run and not run.get("save_only_model"):
        world = int(run["world_size"])
        names = ["rng_state.pth"] if world <= 1 else [f"rng_state_{r}.pth" for r in range(world)]
        problems += [f"{name} (rank {n} of {world})" for n, name in enumerate(names) if not (folder / name).is_file()]
    return problems


def newest_complete(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that is complete."""
    for folder in reversed(checkpoints(output_dir)):
        if not missing(folder):
            return folder
    return None


def quarantine(path: str | os.PathLike[str]) -> Path:
    """Move an incomplete ``checkpoint-N`` out of the ``checkpoint-*`` names: ``incomplete-checkpoint-N[.n]``.

    Neither Axolotl's resume nor Transformers' rotation lists it again; nothing is deleted.
    """
    folder = Path(path)
    target = folder.with_name(QUARANTINE_PREFIX + folder.name)
    n = 1
    while target.exists():
        target = folder.with_name(f"{QUARANTINE_PREFIX}{folder.name}.{n}")
        n += 1
    folder.rename(target)
    return target
