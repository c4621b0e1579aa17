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
   readable header and exactly the size it says; a torch zip file ends with its central directory.
3. With the record of rule 4: the weights are there; the optimizer state only where the record
   says this save wrote it. Sharded weights are all there (an index's shards; FSDP's
   ``.metadata``; DeepSpeed's ``latest``).
4. The record: ``trainer_state.json`` carries the run's world size, ``save_only_model`` and whether
   this save wrote optimizer state (``stateful_callbacks``, by the ``resume`` patch's callback,
   written on the main process once its optimizer save returned). With it, every rank's
   ``rng_state_R.pth`` is asked for unless the save was model-only.

**Bad input is not a verdict.** A marker, record or pending-save record that does not parse, has
the wrong types or claims what no job has (a world size above :data:`MAX_WORLD`, another step) is
treated as absent, and :class:`Judgment` carries one note saying so; every reader is bounded
(a marker over :data:`MAX_MARKER_BYTES` is not read; RNG files are counted from one listing, never
by enumerating the world size).

**What may be deleted** (:func:`cleanup`): only a folder this package can prove is its own
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "checkpoint-"
QUARANTINE_PREFIX = "incomplete-"  # outside the `checkpoint-*` names Axolotl and Transformers list
STATE = "trainer_state.json"
RECORD = "SaveFixCheckpointRecord"  # the callback whose state trainer_state.json carries
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
RNG_PREFIX = "rng_state"
MARKER = "savefix_commit.json"  # the commit marker (rule 0), written last
MARKER_FORMAT = 1
PENDING = "savefix_pending.json"  # the pending-save record, written before a save starts
PENDING_FORMAT = 1
OWN_RECORDS = "savefix_"  # this package's records inside a checkpoint: never part of what the save wrote
MAX_WORLD = 1 << 24  # more ranks than any job runs: a marker or record claiming more is bad input
MAX_MARKER_BYTES = 256 << 20  # a marker larger than this is not read (1M files take about 50 MB)
MAX_STATE_BYTES = 256 << 20  # nor a trainer_state.json larger than this


def step_of(path: Path) -> int | None:
    tail = path.name[len(PREFIX) :] if path.name.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() and tail.isascii() else None


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


def _whole(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return _safetensors_whole(path)
    if path.suffix in TORCH_SUFFIXES:
        return _torch_file_whole(path)
    return True


# --- readers: bad input is treated as absent, with one note ------------------------------------------------------


def _count(value: Any, low: int = 0, high: int | None = None) -> int | None:
    """``value`` when it is an int (not a bool) in ``[low, high]``; else None."""
    if type(value) is not int or value < low or (high is not None and value > high):
        return None
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _file_name_ok(name: Any) -> bool:
    if not isinstance(name, str) or not name or len(name) > 4096 or "\0" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def marker_problem(loaded: Any, step: int | None) -> str | None:
    """Why ``loaded`` (a parsed ``savefix_commit.json`` of ``checkpoint-{step}``) is not a marker this rule reads; None if it is."""
    if not isinstance(loaded, dict):
        return f"not a JSON object ({type(loaded).__name__})"
    if loaded.get("format") != MARKER_FORMAT or type(loaded.get("format")) is not int:
        return f"format {_shown(loaded.get('format'))}, not {MARKER_FORMAT}"
    marked = _count(loaded.get("global_step"))
    if marked is None:
        return f"global_step {_shown(loaded.get('global_step'))} is not a step"
    if step is not None and marked != step:
        return f"global_step {marked}, not {step}: another checkpoint's"
    if _count(loaded.get("world_size"), 1, MAX_WORLD) is None:
        return f"world_size {_shown(loaded.get('world_size'))} is not a number of ranks (1 to {MAX_WORLD})"
    if type(loaded.get("save_only_model")) is not bool:
        return f"save_only_model {_shown(loaded.get('save_only_model'))} is not true or false"
    files = loaded.get("files")
    if not isinstance(files, dict):
        return f"files {_shown(files)} is not an object"
    for name, size in files.items():
        if not _file_name_ok(name) or _count(size) is None:
            return f"files names {_shown(name)} with size {_shown(size)}"
    return _world_problem(loaded["world_size"], loaded["save_only_model"], files)


def _world_problem(world: int, save_only_model: bool, files: Mapping[str, Any]) -> str | None:
    """A marker's world size against the RNG files it lists: its writer's own rank wrote one before the barrier.

    One process writes ``rng_state.pth``; each rank of several ``rng_state_R.pth`` (R below the world
    size). A marker that claims a world its own files contradict is not one a save wrote.
    """
    rng = [name for name in files if name.startswith(RNG_PREFIX) and "/" not in name]
    if world == 1:
        wrong = [name for name in rng if name != "rng_state.pth"]
        ok = not wrong and (save_only_model or "rng_state.pth" in rng)
    else:
        ranks = [_rng_rank(name) for name in rng]
        wrong = [name for name, rank in zip(rng, ranks, strict=True) if rank is None or rank >= world]
        ok = not wrong and (save_only_model or bool(rng))
    if ok:
        return None
    listed = ", ".join(sorted(rng)[:3]) or "none"
    return f"world_size {world} disagrees with the RNG files it lists ({listed})"


def load_marker(folder: Path) -> tuple[dict | None, str | None]:
    """``folder``'s commit marker, checked (one open): ``(marker, None)``; ``(None, note)``: bad input; ``(None, None)``: none.

    Raises FileNotFoundError when ``folder`` itself is gone.
    """
    path = folder / MARKER
    try:
        with path.open("rb") as f:
            data = f.read(MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        if not folder.is_dir():
            raise
        return None, None
    except OSError as error:
        return None, f"{folder.name}/{MARKER} could not be read ({error.strerror or error}): judged file by file"
    if len(data) > MAX_MARKER_BYTES:
        return None, f"{folder.name}/{MARKER} is larger than {MAX_MARKER_BYTES} bytes, not a marker: judged file by file"
    try:
        loaded = json.loads(data)
    except (ValueError, RecursionError):
        return None, f"{folder.name}/{MARKER} does not parse as JSON: judged file by file"
    problem = marker_problem(loaded, step_of(folder))
    if problem:
        return None, f"{folder.name}/{MARKER} is not a commit marker this version reads ({problem}): judged file by file"
    return loaded, None


def read_marker(folder: Path) -> dict | None:
    """``folder``'s commit marker when it is one this rule reads (:func:`load_marker`); None otherwise."""
    return load_marker(folder)[0]


def record_problem(stored: Any) -> str | None:
    """Why ``stored`` (the record's ``attributes``) is not a run record this rule reads; None when it is."""
    if not isinstance(stored, dict):
        return f"not an object ({type(stored).__name__})"
    if _count(stored.get("world_size"), 1, MAX_WORLD) is None:
        return f"world_size {_shown(stored.get('world_size'))} is not a number of ranks (1 to {MAX_WORLD})"
    if type(stored.get("save_only_model", False)) is not bool:
        return f"save_only_model {_shown(stored.get('save_only_model'))} is not true or false"
    if type(stored.get("optimizer", False)) is not bool:
        return f"optimizer {_shown(stored.get('optimizer'))} is not true or false"
    fingerprint = stored.get("fingerprint", {})
    if not isinstance(fingerprint, dict) or not all(isinstance(k, str) for k in fingerprint):
        return f"fingerprint {_shown(fingerprint)} is not an object"
    return None


def load_record(state: Any) -> tuple[dict | None, str | None]:
    """The run's record in a parsed ``trainer_state.json``, checked: ``(record, None)``, ``(None, note)`` or ``(None, None)``.

    The record: ``{"world_size": W, "save_only_model": b, "optimizer": b (from 0.7), "fingerprint": {...}}``.
    """
    if not isinstance(state, dict):
        return None, None
    callbacks = state.get("stateful_callbacks")
    stored = callbacks.get(RECORD) if isinstance(callbacks, dict) else None
    if isinstance(stored, list):  # Transformers keeps a list when several instances are registered
        stored = stored[-1] if stored else None
    if stored is None:
        return None, None
    attributes = stored.get("attributes") if isinstance(stored, dict) else stored
    problem = record_problem(attributes)
    if problem:
        return None, f"{STATE}'s {RECORD} is not a record this version reads ({problem}): ignored"
    return attributes, None


def record(state: Any) -> dict | None:
    """The run's record in a parsed ``trainer_state.json`` when it is one this rule reads (:func:`load_record`)."""
    return load_record(state)[0]


def read_pending(folder: Path) -> dict | None:
    """``folder``'s pending-save record, checked: ``{"format", "global_step", "fresh"}``; None when absent or not one."""
    try:
        with (folder / PENDING).open("rb") as f:
            loaded = json.loads(f.read(4096))
    except (OSError, ValueError, RecursionError):
        return None
    if (
        not isinstance(loaded, dict)
        or loaded.get("format") != PENDING_FORMAT
        or _count(loaded.get("global_step")) is None
        or type(loaded.get("fresh")) is not bool
    ):
        return None
    return loaded


# --- the judgment --------------------------------------------------------------------------------------------------

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
                tuple(marker_lacks(folder, marker, now)),
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


def _read_state(folder: Path) -> tuple[dict | None, str | None]:
    """``trainer_state.json`` parsed (a dict), or None and what is wrong with it. Raises FileNotFoundError if the folder is gone."""
    try:
        with (folder / STATE).open("rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        if not folder.is_dir():
            raise
        return None, f"{STATE} (never written: the save was cut before its end)"
    except OSError:
        return None, f"{STATE} (unreadable)"
    if len(data) > MAX_STATE_BYTES:
        return None, f"{STATE} (larger than {MAX_STATE_BYTES} bytes: not one Transformers wrote)"
    try:
        loaded = json.loads(data)
    except (ValueError, RecursionError):
        return None, f"{STATE} (cut while being written)"
    if not isinstance(loaded, dict):
        return None, f"{STATE} (not a JSON object)"
    return loaded, None


def _judge_files(folder: Path, notes: tuple[str, ...] = (), ranks: list[int] | None = None, *, skip_rng: bool = False) -> Judgment:
    """Rules 1 to 4; ``ranks``: whose RNG files rule 4 asks for (all when None); ``skip_rng``: rule 2 opens no RNG file."""
    if not folder.is_dir():
        return Judgment((GONE,), notes)
    problems: list[str] = []
    state, trouble = _read_state(folder)
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


def _missing(folder: Path, ranks: list[int] | None = None, *, skip_rng: bool = False) -> list[str]:
    """Rules 1 to 4 as a list of what ``folder`` lacks (:func:`_judge_files`)."""
    return list(_judge_files(folder, (), ranks, skip_rng=skip_rng).lacks)


def rng_name(rank: int, world: int) -> str:
    """The RNG file rank ``rank`` of ``world`` processes writes (Transformers' ``_save_rng_state``)."""
    return "rng_state.pth" if world <= 1 else f"rng_state_{rank}.pth"


def _rng_rank(name: str) -> int | None:
    """``rng_state_R.pth`` -> R (the exact name Transformers writes); None for another name."""
    if not (name.startswith("rng_state_") and name.endswith(".pth")):
        return None
    digits = name[len("rng_state_") : -len(".pth")]
    return int(digits) if digits.isdigit() and digits.isascii() and str(int(digits)) == digits else None


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


# --- rule 0: the commit marker ---------------------------------------------------------------------------------------


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


def _own(name: str) -> bool:
    return name.startswith(OWN_RECORDS) or name.startswith("." + OWN_RECORDS)


def marker_main_lacks(folder: Path, marker: dict, now: dict[str, int]) -> list[str]:  # noqa: ARG001
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


def marker_rng_lacks(marker: dict, rank: int, size_now: int | None) -> list[str]:
    """Rule 0 for rank ``rank``'s RNG file: ``size_now`` its size on this disk (None: absent)."""
    world = marker["world_size"]
    if marker["save_only_model"] or rank >= world:
        return []
    name = rng_name(rank, world)
    saved = marker["files"].get(name)
    if size_now is None:
        return [f"{name} (rank {rank} of {world})"]
    if saved is not None and saved != size_now:
        return [f"{name} ({size_now} bytes, {saved} when saved: truncated or changed since the save)"]
    return []


def marker_lacks(folder: Path, marker: dict, now: dict[str, int]) -> list[str]:
    """Rule 0 on one disk: the main files and every rank's RNG file of the recorded world (counted from the listing)."""
    problems = marker_main_lacks(folder, marker, now)
    if marker["save_only_model"]:
        return problems
    world = marker["world_size"]
    present = [name for name in now if name.startswith(RNG_PREFIX) and "/" not in name]
    saved = marker["files"]
    for name in sorted(present):
        if name in saved and saved[name] != now[name]:
            problems.append(f"{name} ({now[name]} bytes, {saved[name]} when saved: truncated or changed since the save)")
    return problems + rng_lacking(world, present)


def listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (``/``-separated relative path) and its size in bytes; no file is opened.

    This package's own records (``savefix_*``, and their temporary files) are left out: they are not
    what the save wrote. Raises FileNotFoundError when ``folder`` is gone.
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
                elif not (prefix == "" and _own(entry.name)):
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


def _write_atomically(folder: Path, name: str, content: str, writer: str) -> Path:
    temporary = folder / f".{name}.{writer}.tmp"
    with temporary.open("w", encoding="utf-8") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, folder / name)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself, durable
        finally:
            os.close(fd)
    except OSError:
        pass
    return folder / name


def write_marker(folder: Path, step: int, world_size: int, save_only_model: bool, writer: str) -> Path:
    """Write ``folder``'s commit marker last and atomically, then remove the pending-save record (the save committed).

    Call only once every rank's part of the checkpoint is written (after a barrier). Several writers
    on one shared disk write the same content; the rename makes whichever is last whole.
    """
    content = json.dumps(marker_content(folder, step, world_size, save_only_model), separators=(",", ":"))
    path = _write_atomically(folder, MARKER, content, writer)
    (folder / PENDING).unlink(missing_ok=True)  # its own record: the marker supersedes it
    return path


# --- the pending-save record: which folders are provably this package's own -------------------------------------


def write_pending(folder: Path, step: int, fresh: bool, writer: str) -> Path:
    """Before a save of ``checkpoint-{step}`` starts: record it (``fresh``: the folder was not there when the run started).

    Removes a commit marker already in the folder first (a save into an existing folder: the old
    marker would speak for files this save rewrites). Creates the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    content = json.dumps({"format": PENDING_FORMAT, "global_step": step, "fresh": fresh}, separators=(",", ":"))
    return _write_atomically(folder, PENDING, content, writer)


def own_cut(folder: Path) -> bool:
    """Whether ``folder`` (``checkpoint-N`` or a set-aside ``incomplete-checkpoint-N[.n]``) is provably this package's own garbage.

    True when its pending-save record is there, names step N and says the save created the folder
    (``fresh``), and no commit marker (readable or not) is there: a save this package started in a
    folder of its own making and that never committed. True also for a folder that holds nothing but
    this package's own records and temporary files (a kill between the folder's creation and its
    pending record): deleting it removes nothing else. Anything else is not proven.
    """
    step = step_of(folder)
    if step is None:
        aside = set_aside_step(folder)
        step = aside[0] if aside else None
    if step is None or (folder / MARKER).exists():
        return False
    pending = read_pending(folder)
    if pending is not None:
        return pending["global_step"] == step and pending["fresh"] is True
    try:
        with os.scandir(folder) as scan:
            return all(_own(entry.name) and not entry.is_dir(follow_symlinks=False) for entry in scan)
    except OSError:
        return False


# --- resuming: the newest complete checkpoint, and what becomes of the others -----------------------------------


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


def set_aside_step(path: Path) -> tuple[int, int] | None:
    """``(N, n)`` of a set-aside folder ``incomplete-checkpoint-N[.n]`` (``n`` 0 when absent); None for another name."""
    name = path.name
    if not name.startswith(QUARANTINE_PREFIX + PREFIX):
        return None
    step, _, suffix = name[len(QUARANTINE_PREFIX + PREFIX) :].partition(".")
    if not (step.isdigit() and step.isascii()) or (suffix and not (suffix.isdigit() and suffix.isascii())):
        return None
    return int(step), int(suffix or 0)


def set_aside_folders(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The set-aside folders (``incomplete-checkpoint-N[.n]``) of ``output_dir``, oldest (step, n) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{QUARANTINE_PREFIX}{PREFIX}*") if set_aside_step(p) is not None and p.is_dir()]
    return sorted(found, key=lambda p: set_aside_step(p) or (0, 0))


OLDER_OWN_CUT = "a cut save of this package's own (started, never committed), older than the newest such one: only that is kept"
SHORT_OF_SPACE = "a cut save of this package's own: output_dir has less free space than one checkpoint"


@dataclass(frozen=True)
class Cleanup:
    """What an auto-resume does with the folders of ``output_dir``, from :func:`cleanup`.

    ``newest``: the newest complete ``checkpoint-N`` (what the resume takes), or None.
    ``set_aside``: ``(folder, why)``, each ``checkpoint-N`` newer than ``newest`` that cannot be resumed
    from: renamed to ``incomplete-checkpoint-N``, nothing in it deleted.
    ``delete``: ``(folder, why)``, each folder to delete: provably this package's own cut saves only.
    ``kept``: set-aside folders left where they are (not provably this package's own: never deleted).
    """

    newest: Path | None
    set_aside: tuple[tuple[Path, str], ...]
    delete: tuple[tuple[Path, str], ...]
    kept: tuple[Path, ...]


def _order(path: Path) -> tuple[int, int, int]:
    """Age of a cut save: its step, then set-aside before the ``checkpoint-N`` of the same step, then ``.n``."""
    aside = set_aside_step(path)
    if aside is not None:
        return aside[0], 0, aside[1]
    return step_of(path) or 0, 1, 0


def cleanup(
    scanned: list[tuple[Path, list[str] | tuple[str, ...], bool]],
    set_aside: list[tuple[Path, bool]],
    *,
    sizes: Mapping[Path, int] | None = None,
    free_bytes: int | None = None,
) -> Cleanup:
    """The auto-resume's policy, pure: which ``checkpoint-N`` are set aside, which folders deleted, which left.

    ``scanned``: ``(folder, lacks, own_cut)`` for each ``checkpoint-N``, oldest first: at least every one
    from the newest complete one up (older ones are ignored: never touched). ``set_aside``: ``(folder,
    own_cut)`` for each existing ``incomplete-checkpoint-N[.n]``. ``own_cut``: :func:`own_cut`.
    ``sizes``: bytes of each folder (the newest complete one and every cut save); ``free_bytes``: the
    free space of ``output_dir`` now. Rules:

    1. The newest complete ``checkpoint-N`` is what the resume takes. Older folders are not touched.
    2. Each incomplete ``checkpoint-N`` newer than it is set aside (renamed): a resume would fail on it.
    3. Of this package's own cut saves (own_cut: started, never committed; set aside before or now),
       the newest is kept and the older ones are deleted (issue 19's bound); when a complete
       checkpoint exists and ``free_bytes`` plus what this frees is less than one checkpoint (the
       newest complete one's bytes), the newest is deleted too.
    4. Nothing else is deleted: a set-aside folder that is not provably the package's own stays (``kept``).
    """
    complete = [p for p, lacks, _ in scanned if not lacks]
    newest = complete[-1] if complete else None
    newest_step = (step_of(newest) or 0) if newest is not None else -1
    cut = [(p, lacks, own) for p, lacks, own in scanned if lacks and (step_of(p) or 0) > newest_step]
    own = sorted([p for p, _, is_own in cut if is_own] + [p for p, is_own in set_aside if is_own], key=_order)
    delete: list[tuple[Path, str]] = [(p, OLDER_OWN_CUT) for p in own[:-1]]
    if own and newest is not None and sizes is not None and free_bytes is not None:
        one = sizes.get(newest, 0)
        freed = sum(sizes.get(p, 0) for p, _ in delete)
        if one and free_bytes + freed < one:
            delete.append((own[-1], SHORT_OF_SPACE))
    deleted = {p for p, _ in delete}
    moving = tuple((p, "; ".join(lacks)) for p, lacks, _ in cut if p not in deleted)
    kept = tuple(p for p, _ in set_aside if p not in deleted)
    return Cleanup(newest, moving, tuple(delete), kept)
