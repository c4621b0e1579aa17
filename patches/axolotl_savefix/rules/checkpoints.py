"""Is a ``checkpoint-N`` folder complete? Judged by what its own save wrote. Pure: files only, no Axolotl, no torch.

Transformers writes a checkpoint in place (``Trainer._save_checkpoint``), in this order: the
weights (``save_model``), unless ``save_only_model`` the optimizer and scheduler, the grad scaler
and each rank's RNG state, and last, on the main process, ``trainer_state.json``. What a save
writes differs by run, on purpose: ``save_only_model`` writes neither optimizer nor RNG state;
Axolotl's ``CheckpointSaveMixin`` writes no optimizer or scheduler where the optimizer cannot be
saved (FSDP with torchao's low-bit optimizers: it catches ``NotImplementedError``/``KeyError``);
a LoRA run writes an adapter; FSDP and DeepSpeed write folders of their own. A checkpoint is
therefore judged against its own save, never against an idea of a full one:

0. **The commit marker**, checked first. Once every rank's part of ``checkpoint-N`` is written
   (after a barrier on the save path), the main process of each node writes
   ``savefix_commit.json`` last, atomically: the step, the world size, ``save_only_model`` and
   every file it found with its size (:func:`write_marker`). A folder with a marker is complete
   when every file the marker names is there with the size it names (a file deleted or truncated
   since is caught), ``trainer_state.json`` and the weights are on this disk (on a node-local
   disk another node may hold them), sharded saves have their ``.metadata``/``latest``, and every
   rank's RNG file is there unless the save was model-only. The optimizer is what the marker
   lists: a save that wrote none (the fallback above) is complete. No file is opened but the marker.
1. Without a marker (stock Axolotl's checkpoints, a save cut before its end): ``trainer_state.json``
   parses and its ``global_step`` is N. It is written last, so every file the main process writes
   before it is there.
2. Every weight, optimizer, scheduler and RNG file present is whole: a ``.safetensors`` file has a
   readable header and exactly the size it says; a torch zip file ends with its central directory;
   also in a subfolder another writer fills after ``trainer_state.json`` (ReLoRA's ``relora/``).
3. With the record of rule 4: the weights are there; the optimizer state only where the record
   says this save wrote it. Sharded weights are all there (an index's shards; FSDP's
   ``.metadata``; DeepSpeed's ``latest``).
4. The record: ``trainer_state.json`` carries the run's world size, ``save_only_model`` and whether
   this save wrote optimizer state (``stateful_callbacks``, by the journal's ``SaveFixCheckpointRecord``,
   written on the main process once its optimizer save returned). With it, every rank's
   ``rng_state_R.pth`` is asked for unless the save was model-only.

**Bad input is not a verdict.** A marker, record or pending-save record that does not parse, has
the wrong types or claims what no job has (a world size above :data:`MAX_WORLD`, another step) is
treated as absent, and :class:`Judgment` carries one note saying so; every reader is bounded
(a marker over :data:`MAX_MARKER_BYTES` is not read; RNG files are counted from one listing, never
by enumerating the world size).

**What may be deleted** (:mod:`rules.cleanup`): only a folder this package can prove is its own
garbage. A save starts, on the processes that write the marker, by writing
``savefix_pending.json`` (:func:`write_pending`): the step, and whether the folder was absent when
the run started (``fresh``). A folder with a fresh pending record and no marker is this package's
own save that never committed (:func:`own_cut`). Nothing else is deleted: an incomplete
checkpoint-N newer than the one a resume takes is moved aside (renamed), an older one is not
touched at all.

Limits: a checkpoint written without the record (stock Axolotl, or before the fix was enabled) is
checked by rules 1 and 2 only, so a missing RNG file of another rank is not seen there
(Transformers then resumes with a fresh RNG for that rank, and says so). A torch file in the legacy,
non-zip format cannot be checked for truncation and is taken as whole.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .records import (  # noqa: F401 - the vocabulary of a checkpoint folder: its names and records (rules.records)  # the readers' own helpers, used by the rules below
    MARKER,
    MARKER_FORMAT,
    MAX_STATE_BYTES,
    MAX_WORLD,
    OWN_RECORDS,
    PENDING,
    PENDING_EVAL,
    PREEMPTION,
    PREFIX,
    QUARANTINE_PREFIX,
    RECORD,
    RNG_PREFIX,
    STATE,
    TORCH_SUFFIXES,
    _own,
    _rng_rank,
    _shown,
    eval_pending,
    listing,
    load_marker,
    load_record,
    marker_content,
    own_cut,
    read_pending,
    read_state,
    record,
    rng_name,
    set_aside_step,
    step_of,
    write_marker,
    write_pending,
)


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
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return size == 8 + header_len + max(ends, default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        return False


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


def _json_whole(path: Path) -> bool:
    """A JSON file parses (at most :data:`MAX_STATE_BYTES` read): a cut one does not."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            return True  # too large to read here: taken as whole
        json.loads(data)
    except (OSError, ValueError, RecursionError):
        return False
    return True


def _whole(path: Path, *, json_too: bool = False) -> bool:
    if json_too and path.suffix == ".json":
        return _json_whole(path)
    if path.suffix == ".safetensors":
        return _safetensors_whole(path)
    if path.suffix in TORCH_SUFFIXES:
        return _torch_file_whole(path)
    return True


NO_WEIGHTS = "the model weights (none there: deleted, or never written)"
GONE = "the folder (moved or deleted while being checked)"
NO_OPTIMIZER = "the optimizer state its save wrote (deleted since)"


@dataclass(frozen=True)
class Judgment:
    """What a ``checkpoint-N`` folder is, judged by what its own save wrote (:func:`judge`).

    ``lacks``: what it lacks to be resumed from (empty: complete). ``notes``: bad input set aside
    (a marker or record that is not one), one line each. ``marked``: judged from a commit marker.
    ``optimizer``: its save wrote optimizer state (None: not known, a stock checkpoint without one).
    ``save_only_model``: its save was model-only (None: not recorded).
    """

    lacks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    marked: bool = False
    optimizer: bool | None = None
    save_only_model: bool | None = None

    @property
    def complete(self) -> bool:
        return not self.lacks


def judge(path: str | os.PathLike[str]) -> Judgment:
    """``checkpoint-N`` at ``path`` on one disk, every rank's part asked for: rule 0 with a marker, else rules 1 to 4.

    A folder that disappears while being checked (another process set it aside) lacks :data:`GONE`.
    Never raises on the folder's content.
    """
    folder = Path(path)
    try:
        marker, note = load_marker(folder)
        notes = (note,) if note else ()
        if marker is not None:
            now = listing(folder)
            return Judgment(
                tuple(marker_lacks(marker, now)),
                notes,
                marked=True,
                optimizer=has_optimizer(marker["files"]),
                save_only_model=marker["save_only_model"],
            )
        return _judge_files(folder, notes)
    except FileNotFoundError:
        return Judgment((GONE,))


def missing(path: str | os.PathLike[str]) -> list[str]:
    """What ``checkpoint-N`` at ``path`` lacks to be resumed from by every rank on one disk; empty when complete."""
    return list(judge(path).lacks)


def _judge_files(folder: Path, notes: tuple[str, ...] = (), ranks: list[int] | None = None, *, skip_rng: bool = False) -> Judgment:
    """Rules 1 to 4; ``ranks``: whose RNG files rule 4 asks for (all when None); ``skip_rng``: rule 2 opens no RNG file."""
    if not folder.is_dir():
        return Judgment((GONE,), notes)
    problems: list[str] = []
    state, trouble = read_state(folder)
    if trouble:
        problems.append(trouble)
    if state is not None:
        step = step_of(folder)
        recorded = state.get("global_step")
        if step is not None and (type(recorded) is not int or recorded != step):
            problems.append(f"{STATE} (global_step {_shown(recorded)}, not {step})")
    run, note = load_record(state)
    if note:
        notes = (*notes, f"{folder.name}/{note}")
    with os.scandir(folder) as scan:  # one listing; the kinds from it (no stat per entry where the OS tells)
        kinds = {entry.name: entry.is_dir() for entry in scan}
    names = sorted(kinds)
    for name in names:
        if skip_rng and name.startswith(RNG_PREFIX):
            continue
        if not kinds[name] and name != STATE and not name.startswith(OWN_RECORDS) and not _whole(folder / name):
            problems.append(f"{name} (cut while being written)")
    for name in (n for n in names if kinds[n] and not n.startswith(SHARDED)):  # a subfolder another writer filled
        problems += [f"{name}/{inner} (cut while being written)" for inner in _cut_inside(folder / name)]
    for name in (n for n in names if n.endswith(".index.json") and not kinds[n]):
        try:
            index = json.loads((folder / name).read_text(encoding="utf-8"))
            weight_map = index.get("weight_map", {}) if isinstance(index, dict) else None
            shards = {v for v in weight_map.values() if isinstance(v, str)} if isinstance(weight_map, dict) else None
        except (OSError, ValueError, RecursionError):
            shards = None
        if shards is None:
            problems.append(f"{name} (unreadable)")
            continue
        problems += [f"{shard} (listed in {name})" for shard in sorted(shards) if not (folder / shard).is_file()]
    for name in (n for n in names if kinds[n]):
        if name.startswith(("pytorch_model_fsdp_", "optimizer_", "model_fsdp_")):
            if not (folder / name / ".metadata").is_file():
                problems.append(f"{name}/.metadata (a sharded save that did not finish)")
        elif name.startswith("global_step") and "latest" not in kinds:
            problems.append(f"latest (DeepSpeed's {name} did not finish)")
    wrote_optimizer = any(_optimizer_name(name, kinds[name]) for name in names)
    if run and not any(_weights_name(name, kinds[name]) for name in names):
        problems.append(NO_WEIGHTS)
    if run and run.get("optimizer") is True and not run.get("save_only_model") and not wrote_optimizer:
        problems.append(NO_OPTIMIZER)
    if run and not run.get("save_only_model"):
        problems += rng_lacking(run["world_size"], {n for n in names if not kinds[n]}, ranks)
    optimizer = run.get("optimizer") if run and "optimizer" in run else (wrote_optimizer if wrote_optimizer else None)
    save_only = bool(run.get("save_only_model")) if run else None
    return Judgment(tuple(problems), notes, marked=False, optimizer=optimizer, save_only_model=save_only)


SHARDED = ("pytorch_model_fsdp_", "optimizer_", "model_fsdp_", "global_step")  # folders with a completion file of their own
WHOLE_INSIDE = (".safetensors", ".json", *TORCH_SUFFIXES)  # what rule 2 opens in another writer's subfolder


def _cut_inside(folder: Path, depth: int = 2) -> list[str]:
    """The weight and torch files under ``folder`` (``depth`` levels at most) that are not whole: rule 2 in a subfolder.

    ReLoRA writes ``checkpoint-N/relora/`` (weights and JSON) after ``trainer_state.json``; without a
    commit marker their truncation is seen here. A file missing there is not (nothing names it).
    """
    cut: list[str] = []
    try:
        with os.scandir(folder) as scan:
            entries = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan)
    except OSError:
        return cut
    for name, is_dir in entries:
        if is_dir and depth > 1:
            cut += [f"{name}/{inner}" for inner in _cut_inside(folder / name, depth - 1)]
        elif not is_dir and Path(name).suffix in WHOLE_INSIDE and not _whole(folder / name, json_too=True):
            cut.append(name)
    return cut


def _missing(folder: Path, ranks: list[int] | None = None, *, skip_rng: bool = False) -> list[str]:
    """Rules 1 to 4 as a list of what ``folder`` lacks (:func:`_judge_files`)."""
    return list(_judge_files(folder, (), ranks, skip_rng=skip_rng).lacks)


def rng_lacking(world: int, present: Iterable[str], ranks: Iterable[int] | None = None) -> list[str]:
    """Rule 4: the RNG files of ``ranks`` (every rank of ``world`` when None) that are not in ``present``.

    Counted from the names present, never by enumerating ``world``: at most the first three are
    named, then how many more.
    """
    present = set(present)
    if ranks is not None:
        out = []
        for rank in ranks:
            if rank < world and rng_name(rank, world) not in present:
                out.append(f"{rng_name(rank, world)} (rank {rank} of {world})")
        return out
    if world <= 1:
        have = {0} if "rng_state.pth" in present else set()
    else:
        have = {r for r in (_rng_rank(n) for n in present) if r is not None and r < world}
    short = world - len(have)
    out = []
    rank = 0
    while short and len(out) < 3 and rank < world:  # at most len(have) + 3 turns
        if rank not in have:
            out.append(f"{rng_name(rank, world)} (rank {rank} of {world})")
        rank += 1
    if short > len(out):
        out.append(f"and {short - len(out)} more ranks' RNG states")
    return out


def _weights_name(name: str, is_dir: bool) -> bool:
    if is_dir:
        return name.startswith(("pytorch_model_fsdp_", "model_fsdp_", "global_step"))
    return name.endswith((".safetensors", ".index.json")) or (
        name.endswith(".bin") and name.startswith(("pytorch_model", "adapter_model", "model"))
    )


def _optimizer_name(name: str, is_dir: bool) -> bool:
    return name.startswith("optimizer") or (is_dir and name.startswith("global_step"))


def has_optimizer(files: Iterable[str]) -> bool:
    """Whether the relative paths ``files`` (a marker's, a listing's) hold optimizer state (``optimizer*``, DeepSpeed's folder)."""
    for name in files:
        top, sep, _ = name.partition("/")
        if _optimizer_name(top, bool(sep)):
            return True
    return False


def marker_main_lacks(marker: dict, now: dict[str, int]) -> list[str]:
    """Rule 0 for the main process's files (every file but the RNG states) on this disk; ``now``: :func:`listing`.

    ``marker`` is one :func:`load_marker` accepted.
    """
    problems: list[str] = []
    # every rank's RNG file is its own rank's (or the walker's size check); this package's own records are not the save's
    files = {name: size for name, size in marker["files"].items() if not name.startswith(RNG_PREFIX) and not _own(name)}
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
    for sharded in sorted(top_dirs):
        if sharded.startswith(("pytorch_model_fsdp_", "optimizer_", "model_fsdp_")) and f"{sharded}/.metadata" not in files:
            problems.append(f"{sharded}/.metadata (a sharded save that did not finish)")
        elif sharded.startswith("global_step") and "latest" not in top_files:
            problems.append(f"latest (DeepSpeed's {sharded} did not finish)")
    return problems


def marker_lacks(marker: dict, now: dict[str, int]) -> list[str]:
    """Rule 0 on one disk: the main files and every rank's RNG file of the recorded world (counted from the listing)."""
    problems = marker_main_lacks(marker, now)
    if marker["save_only_model"]:
        return problems
    world = marker["world_size"]
    present = [name for name in now if name.startswith(RNG_PREFIX) and "/" not in name]
    saved = marker["files"]
    for name in sorted(present):
        if name in saved and saved[name] != now[name]:
            problems.append(f"{name} ({now[name]} bytes, {saved[name]} when saved: truncated or changed since the save)")
    return problems + rng_lacking(world, present)


def newest_complete(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that is complete (newest first: older ones are not read)."""
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


def set_aside_folders(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The set-aside folders (``incomplete-checkpoint-N[.n]``) of ``output_dir``, oldest (step, n) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{QUARANTINE_PREFIX}{PREFIX}*") if set_aside_step(p) is not None and p.is_dir()]
    return sorted(found, key=lambda p: set_aside_step(p) or (0, 0))
