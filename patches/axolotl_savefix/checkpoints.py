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

0. The commit marker, checked first. Once every rank's part of ``checkpoint-N`` is written
   (after a barrier on the save path), the main process of each node writes
   ``savefix_commit.json`` last, atomically (write, then rename): the step, the run's record and
   every file it found with its size (:func:`write_marker`). A folder with a marker is judged
   from the marker and one listing of the folder (:func:`marker_lacks`): every file it names is
   there with the size it names (a file truncated or deleted since is caught), and rules 3 and 4
   hold for the names it lists. No file is opened but the marker. A folder without one (stock
   Axolotl's, this fix's before 0.6, or a save cut before its end) is judged by rules 1 to 4.
   Preemption's ``savefix_preemption.json``, written before a save starts, is not a marker.

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
from dataclasses import dataclass
from pathlib import Path

PREFIX = "checkpoint-"
QUARANTINE_PREFIX = "incomplete-"  # outside the `checkpoint-*` names Axolotl and Transformers list
STATE = "trainer_state.json"
RECORD = "SaveFixCheckpointRecord"  # the callback whose state trainer_state.json carries
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
RNG_PREFIX = "rng_state"
MARKER = "savefix_commit.json"  # the commit marker (rule 0), written last
MARKER_FORMAT = 1


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
        with path.open("rb") as f:  # one open
            magic = f.read(4)
            if not magic:
                return False
            if magic != b"PK\x03\x04":
                return True  # legacy pickle format: cannot tell, taken as whole (see the module's limits)
            return zipfile.is_zipfile(f)
    except OSError:
        return False


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


NO_WEIGHTS = "the model weights (none there: deleted, or never written)"
GONE = "the folder (moved or deleted while being checked)"


def missing(path: str | os.PathLike[str]) -> list[str]:
    """What ``checkpoint-N`` at ``path`` lacks to be resumed from by every rank on one disk; empty when complete.

    With a commit marker, rule 0 (the marker and one listing); without, rules 1 to 4 (every file opened).
    A folder that disappears while being checked (another process set it aside) is incomplete.
    """
    folder = Path(path)
    try:
        marker = read_marker(folder)
        if marker is not None:
            return marker_lacks(folder, marker, listing(folder))
        return _missing(folder)
    except FileNotFoundError:
        return [GONE]


def _missing(folder: Path, ranks: list[int] | None = None, *, skip_rng: bool = False) -> list[str]:
    """Rules 1 to 4; ``ranks``: whose RNG files rule 4 asks for (all when None); ``skip_rng``: rule 2 opens no RNG file."""
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
    with os.scandir(folder) as scan:  # one listing; the kinds from it (no stat per entry where the OS tells)
        kinds = {entry.name: entry.is_dir() for entry in scan}
    names = sorted(kinds)
    for name in names:
        if skip_rng and name.startswith(RNG_PREFIX):
            continue
        if not kinds[name] and name != STATE and not _whole(folder / name):
            problems.append(f"{name} (cut while being written)")
    for name in (n for n in names if n.endswith(".index.json") and not kinds[n]):
        try:
            shards = set(json.loads((folder / name).read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError):
            problems.append(f"{name} (unreadable)")
            continue
        problems += [f"{shard} (listed in {name})" for shard in sorted(shards) if not (folder / shard).is_file()]
    for name in (n for n in names if kinds[n]):
        if name.startswith(("pytorch_model_fsdp_", "optimizer_", "model_fsdp_")):
            if not (folder / name / ".metadata").is_file():
                problems.append(f"{name}/.metadata (a sharded save that did not finish)")
        elif name.startswith("global_step") and "latest" not in kinds:
            problems.append(f"latest (DeepSpeed's {name} did not finish)")
    run = record(state)
    if run and not any(_weights_name(name, kinds[name]) for name in names):
        problems.append(NO_WEIGHTS)
    if run and not run.get("save_only_model") and not any(_optimizer_name(name, kinds[name]) for name in names):
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


# --- Rule 0: the commit marker -----------------------------------------------------------------------------------


def listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (``/``-separated relative path) and its size in bytes; no file is opened.

    The marker and its temporary files are left out. Raises FileNotFoundError when ``folder`` is gone.
    """
    found: dict[str, int] = {}
    pending = [(folder, "")]
    while pending:
        here, prefix = pending.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), name + "/"))
                elif not entry.name.startswith((MARKER, "." + MARKER)):
                    try:
                        found[name] = entry.stat().st_size
                    except FileNotFoundError:
                        continue
    return found


def marker_content(folder: Path, step: int, world_size: int, save_only_model: bool) -> dict:
    """What :func:`write_marker` writes: ``{"format", "global_step", "world_size", "save_only_model", "files"}``."""
    return {
        "format": MARKER_FORMAT,
        "global_step": step,
        "world_size": world_size,
        "save_only_model": save_only_model,
        "files": listing(folder),
    }


def write_marker(folder: Path, step: int, world_size: int, save_only_model: bool, writer: str) -> Path:
    """Write ``folder``'s commit marker last and atomically: a temporary file named for ``writer``, fsynced, then renamed.

    Call only once every rank's part of the checkpoint is written (after a barrier). Several writers
    on one shared disk write the same content; the rename makes whichever is last whole.
    """
    content = json.dumps(marker_content(folder, step, world_size, save_only_model), separators=(",", ":"))
    temporary = folder / f".{MARKER}.{writer}.tmp"
    with temporary.open("w", encoding="utf-8") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, folder / MARKER)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself, durable
        finally:
            os.close(fd)
    except OSError:
        pass
    return folder / MARKER


def read_marker(folder: Path) -> dict | None:
    """``folder``'s commit marker, parsed (one open); None when there is none or it is not one this rule reads."""
    try:
        loaded = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not folder.is_dir():
            raise
        return None
    except (OSError, ValueError):
        return None  # not whole (it never is: renamed whole), or another format: the full rule judges
    if not isinstance(loaded, dict) or loaded.get("format") != MARKER_FORMAT or not isinstance(loaded.get("files"), dict):
        return None
    return loaded


def _weights_name(name: str, is_dir: bool) -> bool:
    if is_dir:
        return name.startswith(("pytorch_model_fsdp_", "model_fsdp_", "global_step"))
    return name.endswith((".safetensors", ".index.json")) or (
        name.endswith(".bin") and name.startswith(("pytorch_model", "adapter_model", "model"))
    )


def _optimizer_name(name: str, is_dir: bool) -> bool:
    return name.startswith("optimizer") or (is_dir and name.startswith("global_step"))


def marker_main_lacks(folder: Path, marker: dict, now: dict[str, int]) -> list[str]:
    """Rule 0 for the main process's files (every file but the RNG states) on this disk; ``now``: :func:`listing`."""
    problems: list[str] = []
    step = step_of(folder)
    if step is not None and marker.get("global_step") != step:
        problems.append(f"{MARKER} (global_step {marker.get('global_step')}, not {step})")
    # every rank's RNG file is its own rank's (or the walker's size check): set aside first, O(W) once
    files = {name: size for name, size in marker["files"].items() if not name.startswith(RNG_PREFIX)}
    for name, size in sorted(files.items()):
        if name not in now:
            problems.append(f"{name} (deleted since the save: listed in {MARKER})")
        elif now[name] != size:
            problems.append(f"{name} ({now[name]} bytes, {size} when saved: truncated or changed since the save)")
    top_files = {name for name in files if "/" not in name}
    top_dirs = {name.split("/", 1)[0] for name in files if "/" in name}
    if STATE not in top_files:
        problems.append(f"{STATE} (never written on this disk)")
    if not any(_weights_name(n, False) for n in top_files) and not any(_weights_name(n, True) for n in top_dirs):
        if not any(name.endswith("/adapter_model.safetensors") or name.endswith("/adapter_model.bin") for name in files):
            problems.append(NO_WEIGHTS)
    if (
        not marker.get("save_only_model")
        and not any(_optimizer_name(n, False) for n in top_files | top_dirs)
        and not any(_optimizer_name(n, True) for n in top_dirs)
    ):
        problems.append("the optimizer state (none there: deleted, or never written)")
    for sharded in sorted(top_dirs):
        if sharded.startswith(("pytorch_model_fsdp_", "optimizer_", "model_fsdp_")) and f"{sharded}/.metadata" not in files:
            problems.append(f"{sharded}/.metadata (a sharded save that did not finish)")
        elif sharded.startswith("global_step") and "latest" not in top_files:
            problems.append(f"latest (DeepSpeed's {sharded} did not finish)")
    return problems


def marker_rng_lacks(marker: dict, rank: int, size_now: int | None) -> list[str]:
    """Rule 0 for rank ``rank``'s RNG file: ``size_now`` its size on this disk (None: absent)."""
    world = int(marker.get("world_size") or 1)
    if marker.get("save_only_model") or rank >= world:
        return []
    name = rng_name(rank, world)
    saved = marker["files"].get(name)
    if size_now is None:
        return [f"{name} (rank {rank} of {world})"]
    if saved is not None and saved != size_now:
        return [f"{name} ({size_now} bytes, {saved} when saved: truncated or changed since the save)"]
    return []


def marker_lacks(folder: Path, marker: dict, now: dict[str, int]) -> list[str]:
    """Rule 0 on one disk: the main files and every rank's RNG file of the recorded world."""
    world = int(marker.get("world_size") or 1)
    rng = [p for r in range(world) for p in marker_rng_lacks(marker, r, now.get(rng_name(r, world)))]
    return marker_main_lacks(folder, marker, now) + rng
