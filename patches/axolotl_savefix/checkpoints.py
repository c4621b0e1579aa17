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
3. With the record of rule 4: the weights are there (a ``.safetensors`` file, a ``pytorch_model*.bin`` /
   ``adapter_model.bin``, an index, FSDP's or DeepSpeed's folder), and, unless the run saves the model
   only, the optimizer state (``optimizer*`` or DeepSpeed's ``global_step*``): rotation's
   ``shutil.rmtree`` killed half way leaves a folder without some of them.
   Sharded weights are all there: every shard a ``*.index.json`` lists exists,
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
from dataclasses import dataclass, field
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


def _is_weights(path: Path) -> bool:
    """A weight file or folder of any engine: safetensors, torch bins, an index, FSDP shards, DeepSpeed's folder."""
    name = path.name
    if path.is_dir():
        return name.startswith(("pytorch_model_fsdp_", "model_fsdp_", "global_step"))
    return name.endswith((".safetensors", ".index.json")) or (
        name.endswith(".bin") and name.startswith(("pytorch_model", "adapter_model", "model"))
    )


def _is_optimizer(path: Path) -> bool:
    """The optimizer state: ``optimizer.pt``/``.bin``, FSDP's ``optimizer_*`` folder, or DeepSpeed's ``global_step*``."""
    return path.name.startswith("optimizer") or (path.is_dir() and path.name.startswith("global_step"))


def record(state: dict) -> dict | None:
    """The run's record in a parsed ``trainer_state.json``: ``{"world_size": W, "save_only_model": b}``."""
    stored = (state.get("stateful_callbacks") or {}).get(RECORD)
    if isinstance(stored, list):  # Transformers keeps a list when several instances are registered
        stored = stored[-1] if stored else None
    attributes = (stored or {}).get("attributes") if isinstance(stored, dict) else None
    return attributes if isinstance(attributes, dict) and "world_size" in attributes else None


NO_WEIGHTS = "the model weights (none there: deleted, or never written)"
GONE = "the folder (moved or deleted while being checked)"


def missing(path: str | os.PathLike[str]) -> list[str]:
    """What ``checkpoint-N`` at ``path`` lacks to be resumed from; empty when complete.

    A folder that disappears while being checked (another process set it aside) is incomplete.
    """
    try:
        return _missing(Path(path))
    except FileNotFoundError:
        return [GONE]


def _missing(folder: Path, ranks: list[int] | None = None) -> list[str]:
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
    entries = [p.name for p in folder.iterdir()]
    run = record(state)
    if run and not any(_is_weights(folder / name) for name in entries):
        problems.append(NO_WEIGHTS)
    if run and not run.get("save_only_model") and not any(_is_optimizer(folder / name) for name in entries):
        problems.append("the optimizer state (none there: deleted, or never written)")
    return problems + _rng_missing(folder, state, ranks)


def rng_name(rank: int, world: int) -> str:
    """The RNG file rank ``rank`` of ``world`` processes writes (Transformers' ``_save_rng_state``)."""
    return "rng_state.pth" if world <= 1 else f"rng_state_{rank}.pth"


def _rng_missing(folder: Path, state: dict, ranks: list[int] | None = None) -> list[str]:
    """Rule 4 for ``ranks`` (all of the recorded world when ``None``)."""
    run = record(state)
    if not run or run.get("save_only_model"):
        return []
    world = int(run["world_size"])
    wanted = range(world) if ranks is None else [r for r in ranks if r < world]
    return [f"{rng_name(r, world)} (rank {r} of {world})" for r in wanted if not (folder / rng_name(r, world)).is_file()]


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


# --- The set-aside policy (docs/user-guide.md, "Full disk"): which folders a resume scan deletes or sets aside.


def set_aside_step(path: Path) -> tuple[int, int] | None:
    """``(N, n)`` of a set-aside folder ``incomplete-checkpoint-N[.n]`` (``n`` 0 when absent); None for another name."""
    name = path.name
    if not name.startswith(QUARANTINE_PREFIX + PREFIX):
        return None
    step, _, suffix = name[len(QUARANTINE_PREFIX + PREFIX) :].partition(".")
    if not step.isdigit() or (suffix and not suffix.isdigit()):
        return None
    return int(step), int(suffix or 0)


def set_aside_folders(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The set-aside folders (``incomplete-checkpoint-N[.n]``) of ``output_dir``, oldest (step, n) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{QUARANTINE_PREFIX}{PREFIX}*") if set_aside_step(p) is not None and p.is_dir()]
    return sorted(found, key=lambda p: set_aside_step(p) or (0, 0))


ROTATION_GARBAGE = (
    "older than the newest complete checkpoint: a folder that rotation half deleted, or a cut save a later one superseded"
)
SUPERSEDED_CUT = "a cut save older than the newest cut one (only the newest is set aside)"
OLDER_SET_ASIDE = "an older set-aside folder (only the newest is kept)"
SHORT_OF_SPACE = "output_dir has less free space than one checkpoint: every set-aside folder is deleted"


@dataclass(frozen=True)
class Cleanup:
    """What a resume scan does with the folders of ``output_dir``, from :func:`cleanup`.

    ``newest``: the newest complete ``checkpoint-N`` (what a resume takes), or None.
    ``delete``: ``(folder, why)``, each folder to delete (``checkpoint-N`` or set-aside).
    ``set_aside``: the one incomplete ``checkpoint-N`` to move to ``incomplete-checkpoint-N``, or None.
    """

    newest: Path | None
    delete: tuple[tuple[Path, str], ...]
    set_aside: Path | None


def cleanup(
    scanned: list[tuple[Path, list[str]]],
    set_aside: list[Path],
    *,
    sizes: dict[Path, int] | None = None,
    free_bytes: int | None = None,
) -> Cleanup:
    """The set-aside policy, pure: given the scan, which folders are deleted and which one is set aside.

    ``scanned``: each ``checkpoint-N`` with what it lacks (:func:`missing`), oldest first.
    ``set_aside``: the existing ``incomplete-checkpoint-N[.n]`` folders (:func:`set_aside_folders`).
    ``sizes``: bytes of each folder (at least the newest complete one and every folder that may be
    kept or deleted); ``free_bytes``: the free space of ``output_dir`` now. Rules:

    1. An incomplete ``checkpoint-N`` older than the newest complete one is deleted (rotation's
       half-deleted folder, or a cut save that a later complete one superseded).
    2. Of the incomplete ``checkpoint-N`` newer than the newest complete one (the cut save), the
       newest is set aside, the others deleted; existing set-aside folders are deleted when one is
       set aside now, else all but the newest (highest N, then n) are deleted.
    3. When ``free_bytes`` plus what rules 1 and 2 delete is less than one checkpoint (the newest
       complete one's bytes), the set-aside folder (new or kept) is deleted as well. Without a
       complete checkpoint, or without ``sizes``/``free_bytes``, this rule does not apply.
    """
    complete = [p for p, lacks in scanned if not lacks]
    newest = complete[-1] if complete else None
    newest_step = step_of(newest) if newest else None
    delete: list[tuple[Path, str]] = []
    cut: list[Path] = []
    for folder, lacks in scanned:
        if not lacks:
            continue
        if newest_step is not None and (step_of(folder) or 0) < newest_step:
            delete.append((folder, ROTATION_GARBAGE))
        else:
            cut.append(folder)
    moving = cut[-1] if cut else None
    delete += [(folder, SUPERSEDED_CUT) for folder in cut[:-1]]
    older = set_aside if moving else set_aside[:-1]
    delete += [(folder, OLDER_SET_ASIDE) for folder in older]
    kept = moving or (set_aside[-1] if set_aside else None)
    if kept is not None and newest is not None and sizes is not None and free_bytes is not None:
        one = sizes.get(newest, 0)
        freed = sum(sizes.get(folder, 0) for folder, _ in delete)
        if one and free_bytes + freed < one:
            delete.append((kept, SHORT_OF_SPACE))
            moving = None
    return Cleanup(newest, tuple(delete), moving)


# Several nodes. A node's disk holds what its own ranks wrote: every rank its
# ``rng_state_R.pth``, and the main process of the node the rest when Transformers'
# ``save_on_each_node`` is on (else only rank 0 writes it, on node 0's disk). Every
# rank loads, on resume, ``trainer_state.json``, the weights, optimizer and scheduler,
# and its own RNG file, from its own ``output_dir``. So each rank judges what it can
# load (:func:`rank_view`), and :func:`agree` combines the views of every rank.

OWN_WHOLE, OWN_CUT, OWN_ABSENT = "whole", "cut", "absent"


# what Transformers' _load_from_checkpoint accepts as the model's weights in a checkpoint folder
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
WEIGHTS_DESCRIPTION = "model.safetensors (or other model weights)"


def _has_weights(folder: Path) -> bool:
    """Rule 1 implies the weights on one disk (written before trainer_state.json); on a node's own disk it does not."""
    if any((folder / name).is_file() for name in WEIGHT_FILES):
        return True
    for sub in (p for p in folder.iterdir() if p.is_dir()):
        if sub.name.startswith(("pytorch_model_fsdp_", "global_step")):
            return True
        if any((sub / name).is_file() for name in WEIGHT_FILES[4:]):  # an adapter in a subfolder
            return True
    return False


def rank_view(path: str | os.PathLike[str], rank: int, world: int) -> dict:
    """What rank ``rank`` (of ``world`` processes) finds of ``checkpoint-N`` at ``path`` on its own disk.

    JSON-able, to be gathered from every rank: ``lacks``, what this rank lacks to resume
    from it (rules 1 to 3, and rule 4 for its own RNG file only: each rank loads its own
    ``rng_state_R.pth``, never another rank's), and the weights themselves (on one disk rule 1
    implies them; on a node that did not write them it does not); ``main``, whether rules 1
    to 3 hold and the weights are there (the main process's files are there and whole); ``own``, this rank's RNG file, ``"whole"``,
    ``"cut"`` or ``"absent"``; ``record``, the run's record from ``trainer_state.json``
    (``None`` where that file is missing: a node whose main process did not write, or a
    cut save); ``files``, the names in the folder. The world size named in the record wins
    over ``world``.
    """
    folder = Path(path)
    try:
        weights = [] if _has_weights(folder) else [f"{WEIGHTS_DESCRIPTION} (never written on this node)"]
        # the node-aware weights check replaces the one-disk rule's NO_WEIGHTS (said once)
        main = not [p for p in _missing(folder, ranks=[]) if p != NO_WEIGHTS] and not weights
        lacks = [p for p in _missing(folder, ranks=[rank]) if p != NO_WEIGHTS] + weights
        try:
            state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        run = record(state) if isinstance(state, dict) else None
        name = folder / rng_name(rank, int(run["world_size"]) if run else world)
        own = (OWN_WHOLE if _whole(name) else OWN_CUT) if name.is_file() else OWN_ABSENT
        files = sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return {"lacks": [GONE], "main": False, "own": OWN_ABSENT, "record": None, "files": []}
    return {"lacks": lacks, "main": main, "own": own, "record": run, "files": files}


def views(output_dir: str | os.PathLike[str], rank: int, world: int) -> dict[int, dict]:
    """:func:`rank_view` of every ``checkpoint-N`` in ``output_dir``, by step."""
    return {step_of(p) or 0: rank_view(p, rank, world) for p in checkpoints(output_dir)}


@dataclass(frozen=True)
class Agreement:
    """What every rank resumes from, decided from every rank's views (:func:`agree`).

    ``step``: the newest checkpoint every rank can load (``None``: none); ``lacks``: by
    step, what each rank that cannot load it lacks (empty list: every rank can); ``error``:
    set when a checkpoint newer than ``step`` was saved whole but some rank cannot load it
    from its own disk, so ``output_dir`` is not shared: resuming from ``step`` (or from the
    start) would silently throw that progress away. The message names the node, what it
    lacks, and the fix.
    """

    step: int | None
    lacks: dict[int, list[str]] = field(default_factory=dict)
    error: str | None = None

    def judge(self, path: str | os.PathLike[str]) -> list[str]:
        """What ``checkpoint-N`` at ``path`` lacks, judged for the whole run (a stand-in for :func:`missing`)."""
        step = step_of(Path(path))
        return self.lacks.get(step, [GONE]) if step is not None else [GONE]


def _who(gathered: dict) -> str:
    return f"rank {gathered['rank']} (node {gathered['node']})"


def agree(gathered: list[dict]) -> Agreement:
    """Combine every rank's views into one decision, the same on every rank.

    ``gathered``: one entry per rank, ``{"rank": R, "node": NAME, "output_dir": PATH,
    "views": {N: rank_view}}``. A checkpoint can be resumed from when every rank can load
    it. It was *saved whole* when some rank holds the main process's files, whole, and,
    unless the record says ``save_only_model``, every rank of the recorded world holds its
    own RNG file, whole. A checkpoint saved whole, newer than the newest every rank can
    load, means a rank's ``output_dir`` lacks what another node wrote: the error.
    """
    steps = sorted({step for g in gathered for step in g["views"]})
    lacks: dict[int, list[str]] = {}
    for step in steps:
        problems = []
        for g in gathered:
            view = g["views"].get(step)
            if view is None:
                problems.append(f"{_who(g)}: the folder (not in its output_dir)")
            else:
                problems += [f"{_who(g)}: {lack}" for lack in view["lacks"]]
        lacks[step] = problems
    resumable = [step for step in steps if not lacks[step]]
    newest = resumable[-1] if resumable else None
    for step in reversed(steps):
        if newest is not None and step <= newest:
            break
        if _saved_whole(step, gathered):
            return Agreement(newest, lacks, _not_shared(step, gathered))
    return Agreement(newest, lacks)


def _saved_whole(step: int, gathered: list[dict]) -> bool:
    holders = [g["views"][step] for g in gathered if step in g["views"] and g["views"][step]["main"]]
    run = next((v["record"] for v in holders if v["record"]), None)
    if run is None:
        return False  # no record: what the other ranks wrote cannot be told
    if run.get("save_only_model"):
        return True
    world = int(run["world_size"])
    own = {g["rank"]: g["views"].get(step, {}).get("own") for g in gathered}
    return len(gathered) == world and all(own.get(r) == OWN_WHOLE for r in range(world))


def _not_shared(step: int, gathered: list[dict]) -> str:
    holding = [g for g in gathered if step in g["views"] and g["views"][step]["main"]]
    holders = sorted({str(g["node"]) for g in holding})
    written = set(holding[0]["views"][step]["files"])
    lacking = []
    for g in gathered:
        view = g["views"].get(step)
        if view is None:
            lacking.append(f"node {g['node']} (rank {g['rank']}) has no checkpoint-{step} in its output_dir {g['output_dir']}")
        elif view["lacks"]:
            others = {f"rng_state_{r}.pth" for r in range(len(gathered)) if r != g["rank"]}
            names = sorted(written - set(view["files"]) - others) or [lack.split(" (")[0] for lack in view["lacks"]]
            lacking.append(f"node {g['node']} (rank {g['rank']}) lacks {', '.join(names)} in {g['output_dir']}/checkpoint-{step}")
    return (
        f"output_dir is not shared between the nodes: checkpoint-{step} was saved whole (its trainer_state.json, "
        f"weights and optimizer on node {', '.join(holders)}, every rank's RNG state on its own node), but "
        + "; ".join(lacking)
        + ". Every rank resumes from its own output_dir. Put output_dir on storage every node mounts, or set "
        "save_on_each_node: true (with the axolotl_savefix plugin) so that each node writes a whole checkpoint. "
        "Nothing was moved or deleted."
    )
