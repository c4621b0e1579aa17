"""This process's record of its own saves: what was in ``output_dir`` when the run started, and each save's pending record.

No Axolotl, no Transformers: a few functions the save seams call. What it proves is used by every
delete this package makes (:func:`axolotl_savefix.checkpoints.own_cut`): a ``checkpoint-N`` folder
is this package's own only when its save started here, in a folder that was not in ``output_dir``
when the run started (``fresh``), and never committed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from . import checkpoints
from ._log import log_once

_present: dict[str, frozenset[str]] = {}  # realpath(output_dir) -> the checkpoint-N names there at train begin


def _key(output_dir: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(output_dir))


def note_run_start(output_dir: str | os.PathLike[str]) -> None:
    """At train begin (after the resume's set-aside): remember the ``checkpoint-N`` folders ``output_dir`` holds."""
    _present[_key(output_dir)] = frozenset(p.name for p in checkpoints.checkpoints(output_dir))


def is_fresh(folder: str | os.PathLike[str]) -> bool:
    """Whether ``checkpoint-N`` at ``folder`` was absent when this run started (False when the start was not seen)."""
    path = Path(folder)
    names = _present.get(_key(path.parent))
    return names is not None and path.name not in names


def begin_save(folder: Path, step: int, writer: str) -> None:
    """Before the save of ``checkpoint-{step}`` at ``folder``: its pending-save record (:func:`checkpoints.write_pending`).

    A record that cannot be written (a full disk, say) is not fatal: the save goes on as stock's,
    and that folder is then never provably this package's own. An empty folder this call created
    for the record is removed again (``rmdir``: never a folder with anything in it).
    """
    existed = folder.exists()
    try:
        checkpoints.write_pending(folder, step, is_fresh(folder), writer)
    except OSError as error:
        with contextlib.suppress(OSError):
            (folder / f".{checkpoints.PENDING}.{writer}.tmp").unlink(missing_ok=True)  # its own temporary file
            if not existed:
                folder.rmdir()  # only succeeds on the empty folder made above
        log_once(
            f"pending:{folder}",
            f"{folder.name}: pending-save record not written ({error.strerror or error}); the save goes on as stock's, "
            "and a cut of it is set aside, never deleted",
            logging.WARNING,
        )


# --- deleting what is proven the package's own ---------------------------------------------------------------------

DELETING = ".savefix-deleting-"  # a folder renamed so before it is removed: its name alone proves it


def delete_own(folder: Path) -> bool:
    """Delete ``folder``, already proven this package's own by the caller; whether it is gone.

    It is first renamed to a hidden ``.savefix-deleting-<name>.<pid>`` beside it (one atomic rename),
    then removed: a kill in the middle leaves a folder whose name alone says it was being deleted,
    and :func:`finish_deletes` ends it, where a half-deleted folder could no longer prove whose it was.
    """
    target = folder.with_name(f"{DELETING}{folder.name}.{os.getpid()}")
    try:
        folder.rename(target)
    except FileNotFoundError:
        return not folder.exists()
    except OSError:
        target = folder  # cannot rename here: removed in place
    shutil.rmtree(target, ignore_errors=True)
    return not target.exists() and not folder.exists()


def finish_deletes(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed :func:`delete_own` left in ``output_dir`` (``.savefix-deleting-*`` folders)."""
    left = [p for p in Path(output_dir).glob(f"{DELETING}*") if p.is_dir()] if Path(output_dir).is_dir() else []
    for folder in left:
        shutil.rmtree(folder, ignore_errors=True)
    return left


# --- the rotation's victims: Transformers' rotation deletes the oldest checkpoints with shutil.rmtree ----------------

ROTATING = ".savefix-rotating"  # output_dir/.savefix-rotating.<writer>.json: the folder the rotation is deleting


class _RecordingShutil:
    """``shutil`` as Transformers' rotation sees it during one rotation: ``rmtree`` names its victim first.

    Before each ``rmtree(checkpoint)`` the victim's name is written to ``output_dir``; once the
    delete returns the record goes. A kill in between leaves the record: the folder is provably the
    rotation's victim, and :func:`finish_interrupted_rotation` finishes it.
    """

    def __init__(self, output_dir: str, writer: str) -> None:
        self._record = Path(output_dir) / f"{ROTATING}.{writer}.json"

    def __getattr__(self, name: str) -> object:
        return getattr(shutil, name)

    def rmtree(self, path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        victim = Path(path)
        try:
            checkpoints._write_atomically(self._record.parent, self._record.name, json.dumps({"victim": victim.name}), "r")
        except OSError:
            pass  # no record: this delete goes on as stock's
        try:
            shutil.rmtree(victim, *args, **kwargs)  # Transformers' own delete, forwarded
        finally:
            self._record.unlink(missing_ok=True)


@contextlib.contextmanager
def recording_rotation(rotate: object, output_dir: str | os.PathLike[str] | None) -> Iterator[None]:
    """While Transformers' ``rotate`` runs, its module's ``shutil`` records each victim (:class:`_RecordingShutil`).

    Where ``rotate``'s module does not use the standard ``shutil`` (another release's layout), nothing is recorded.
    """
    module = sys.modules.get(getattr(inspect.unwrap(rotate), "__module__", "") or "")  # type: ignore[arg-type]
    if module is None or getattr(module, "shutil", None) is not shutil or not output_dir:
        yield
        return
    module.shutil = _RecordingShutil(os.fspath(output_dir), f"{os.getpid()}")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.shutil = shutil  # type: ignore[attr-defined]


def finish_interrupted_rotation(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Before a rotation: delete what a killed rotation was deleting (its record names it), if it is incomplete now.

    Transformers sorts checkpoints by modification time, and a half-deleted folder's time is the
    kill's: left, it would count as the newest, be kept, and a complete checkpoint deleted in its
    place. A named folder that is complete now (rewritten since, or the kill came before the delete
    began) is left to the rotation. Returns the folders deleted.
    """
    done = []
    finish_deletes(output_dir)
    for record in sorted(Path(output_dir).glob(f"{ROTATING}.*.json")):
        try:
            victim = json.loads(record.read_text(encoding="utf-8")).get("victim")
        except (OSError, ValueError, AttributeError, RecursionError):
            victim = None
        folder = Path(output_dir) / victim if isinstance(victim, str) and "/" not in victim else None
        if folder is not None and checkpoints.step_of(folder) is not None and folder.is_dir() and checkpoints.missing(folder):
            delete_own(folder)
            done.append(folder)
            log_once(
                f"rotation-finished:{folder}",
                f"deleted {folder.name}: a rotation a kill interrupted was deleting it (save_total_limit); finished now",
                logging.WARNING,
            )
        record.unlink(missing_ok=True)
    return done
