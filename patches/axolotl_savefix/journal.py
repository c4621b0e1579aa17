"""This process's record of its own saves: what was in ``output_dir`` when the run started, and each save's pending record.

No Axolotl, no Transformers: a few functions the save seams call. What it proves is used by every
delete this package makes (:func:`axolotl_savefix.checkpoints.own_cut`): a ``checkpoint-N`` folder
is this package's own only when its save started here, in a folder that was not in ``output_dir``
when the run started (``fresh``), and never committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
