"""The files this package and Transformers write into a checkpoint, and their readers. Pure: files only.

The names (``checkpoint-N``, ``incomplete-checkpoint-N[.n]``, ``trainer_state.json``, each rank's
``rng_state_R.pth``) and this package's own records inside a checkpoint, each with a reader that
checks what it reads:

* the commit marker ``savefix_commit.json`` (:func:`write_marker`), written last, once every rank's
  part of a save is on disk: the step, the world size, ``save_only_model``, every file with its size;
* the pending-save record ``savefix_pending.json`` (:func:`write_pending`), written before a save
  starts: the step, and whether the folder was absent when the run started (``fresh``); the marker
  replaces it. With it, :func:`own_cut` proves a folder is this package's own save that never committed;
* the run record in ``trainer_state.json`` (``stateful_callbacks.SaveFixCheckpointRecord``): the world
  size, ``save_only_model``, whether the save wrote optimizer state, the run's fingerprint;
* the preemption record ``savefix_preemption.json`` and the pending-eval record ``savefix_pending_eval.json``.

**Bad input is not a verdict.** A marker, record or pending record that does not parse, has the
wrong types or claims what no job has (a world size above :data:`MAX_WORLD`, another step, a world
its own RNG files contradict) is treated as absent, with one note saying why; every reader is
bounded (a marker over :data:`MAX_MARKER_BYTES` is not read).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
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


PREEMPTION = "savefix_preemption.json"  # inside a checkpoint-N saved on a preemption notice, written before the save
PENDING_EVAL = "savefix_pending_eval.json"  # inside a checkpoint-N whose step's eval a notice cut or skipped


def eval_pending(folder: str | os.PathLike[str]) -> bool:
    """Whether ``checkpoint-N`` was saved on a notice that cut or skipped the evaluation of step N."""
    return (Path(folder) / PENDING_EVAL).is_file()


def step_of(path: Path) -> int | None:
    tail = path.name[len(PREFIX) :] if path.name.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() and tail.isascii() else None


def set_aside_step(path: Path) -> tuple[int, int] | None:
    """``(N, n)`` of a set-aside folder ``incomplete-checkpoint-N[.n]`` (``n`` 0 when absent); None for another name."""
    name = path.name
    if not name.startswith(QUARANTINE_PREFIX + PREFIX):
        return None
    step, _, suffix = name[len(QUARANTINE_PREFIX + PREFIX) :].partition(".")
    if not (step.isdigit() and step.isascii()) or (suffix and not (suffix.isdigit() and suffix.isascii())):
        return None
    return int(step), int(suffix or 0)


def rng_name(rank: int, world: int) -> str:
    """The RNG file rank ``rank`` of ``world`` processes writes (Transformers' ``_save_rng_state``)."""
    return "rng_state.pth" if world <= 1 else f"rng_state_{rank}.pth"


def _rng_rank(name: str) -> int | None:
    """``rng_state_R.pth`` -> R (the exact name Transformers writes); None for another name."""
    if not (name.startswith("rng_state_") and name.endswith(".pth")):
        return None
    digits = name[len("rng_state_") : -len(".pth")]
    return int(digits) if digits.isdigit() and digits.isascii() and str(int(digits)) == digits else None


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

    The record: ``{"world_size": W, "save_only_model": b, "optimizer": b (from 0.2), "fingerprint": {...}}``.
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


def read_state(folder: Path) -> tuple[dict | None, str | None]:
    """``trainer_state.json`` parsed (a dict), or None and what is wrong with it. Raises FileNotFoundError if the folder is gone."""
    try:
        with (folder / STATE).open("rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        if not folder.is_dir():
            raise
        return None, f"{STATE} (never written: a save cut before its end, or a folder no save wrote)"
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


def _own(name: str) -> bool:
    return name.startswith(OWN_RECORDS) or name.startswith("." + OWN_RECORDS)


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


def write_atomically(folder: Path, name: str, content: str, writer: str) -> Path:
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
    path = write_atomically(folder, MARKER, content, writer)
    (folder / PENDING).unlink(missing_ok=True)  # its own record: the marker supersedes it
    return path


def write_pending(folder: Path, step: int, fresh: bool, writer: str) -> Path:
    """Before a save of ``checkpoint-{step}`` starts: record it (``fresh``: the folder was not there when the run started).

    Removes a commit marker already in the folder first (a save into an existing folder: the old
    marker would speak for files this save rewrites). Creates the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    content = json.dumps({"format": PENDING_FORMAT, "global_step": step, "fresh": fresh}, separators=(",", ":"))
    return write_atomically(folder, PENDING, content, writer)


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


def resumed_checkpoint(output_dir: str | os.PathLike[str], global_step: Any) -> str | None:
    """The ``checkpoint-<global_step>`` of ``output_dir`` a run resumed from, seen at train begin; None on a fresh run.

    Transformers has loaded the checkpoint's ``trainer_state.json`` before ``on_train_begin``, so
    ``state.global_step`` is the resumed step (0 on a fresh run); an auto-resume takes its folder
    from ``output_dir`` (Axolotl's ``determine_last_checkpoint``).
    """
    step = int(global_step or 0)
    folder = Path(os.fspath(output_dir)) / f"{PREFIX}{step}"
    return str(folder) if step > 0 and folder.is_dir() else None


def read_preemption(folder: Path) -> dict | None:
    """``folder``'s preemption record, checked: ``{"global_step": N, "signal": name, "fresh": bool}``; None when absent or not one.

    ``global_step`` must be the folder's step; ``fresh`` (from 0.2) says the notice save created the
    folder. One bounded read.
    """
    try:
        with (folder / PREEMPTION).open("rb") as f:
            loaded = json.loads(f.read(4096))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(loaded, dict) or _count(loaded.get("global_step")) is None or loaded["global_step"] != step_of(folder):
        return None
    signal = loaded.get("signal")
    fresh = loaded.get("fresh")
    return {
        "global_step": loaded["global_step"],
        "signal": signal[:20] if isinstance(signal, str) else "a signal",
        "fresh": fresh is True,
    }


def write_preemption(folder: Path, step: int, signal: str, fresh: bool) -> None:
    """The preemption record, written before the notice save starts (atomically: a cut save is still marked)."""
    content = json.dumps({"global_step": step, "signal": signal, "scheduled": False, "fresh": fresh}, separators=(",", ":"))
    write_atomically(folder, PREEMPTION, content, str(os.getpid()))


def write_pending_eval(folder: Path, step: int, signal: str) -> None:
    """The pending-eval record: the notice cut or skipped step ``step``'s evaluation; the resume evaluates it again."""
    content = json.dumps({"global_step": step, "signal": signal}, separators=(",", ":"))
    write_atomically(folder, PENDING_EVAL, content, str(os.getpid()))
