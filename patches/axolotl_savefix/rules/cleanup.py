"""What an auto-resume does with the folders of ``output_dir``: rename, delete (only its own cut saves), or leave. Pure.

:func:`cleanup` decides from a scan (what each ``checkpoint-N`` lacks, and whether each incomplete
or set-aside folder is provably this package's own cut save: :func:`records.own_cut`), the free
space and the sizes; the seam that resumes carries it out. Docs: docs/user-guide.md, "What a resume
does with incomplete folders".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import checkpoints, disk
from .records import own_cut, set_aside_step, step_of

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
    scanned: Sequence[tuple[Path, Sequence[str], bool]],
    set_aside: Sequence[tuple[Path, bool]],
    *,
    sizes: Mapping[Path, int] | None = None,
    free_bytes: int | None = None,
) -> Cleanup:
    """The auto-resume's policy, pure: which ``checkpoint-N`` are set aside, which folders deleted, which left.

    ``scanned``: ``(folder, lacks, own_cut)`` for each ``checkpoint-N``, oldest first: at least every one
    from the newest complete one up (older ones are ignored: never touched). ``set_aside``: ``(folder,
    own_cut)`` for each existing ``incomplete-checkpoint-N[.n]``. ``own_cut``: :func:`rules.records.own_cut`.
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


@dataclass(frozen=True)
class Scan:
    """What an auto-resume finds in ``output_dir`` (:func:`scan`) and what it would do (``plan``).

    ``walked``: ``(checkpoint-N, what it lacks)``, newest first down to the newest complete one, then
    put oldest first; ``newest``: that one (None: none complete); ``sizes``: bytes of the folders the
    plan weighs; ``plan``: :func:`cleanup`'s answer.
    """

    walked: tuple[tuple[Path, list[str]], ...]
    newest: Path | None
    sizes: dict[Path, int]
    plan: Cleanup


def scan(output_dir: str | os.PathLike[str], judge: Callable[[Path], list[str]] = checkpoints.missing) -> Scan:
    """The auto-resume's walk: newest first, stopping at the first complete checkpoint; older folders are not read.

    ``judge``: what a folder lacks (one disk by default; several processes pass the job's verdict).
    The seam that resumes (``seams.incomplete_checkpoints``) carries out ``plan``; ``axolotl-savefix
    checkpoints`` shows it. Sizes and free space are measured (:mod:`rules.disk`); an ``OSError``
    there leaves the shortage rule out.
    """
    walked: list[tuple[Path, list[str]]] = []
    newest = None
    for folder in reversed(checkpoints.checkpoints(output_dir)):
        lacks = judge(folder)
        walked.append((folder, lacks))
        if not lacks:
            newest = folder
            break
    walked.reverse()
    aside = [(p, own_cut(p)) for p in checkpoints.set_aside_folders(output_dir)]
    weighed = [*([newest] if newest else []), *(p for p, lacks in walked if lacks), *(p for p, _ in aside)]
    try:
        sizes, free = {p: disk.dir_bytes(p) for p in weighed}, disk.free_bytes(output_dir)
    except OSError:
        sizes, free = {}, None
    scanned = [(p, lacks, bool(lacks) and own_cut(p)) for p, lacks in walked]
    return Scan(tuple(walked), newest, sizes, cleanup(scanned, aside, sizes=sizes, free_bytes=free))
