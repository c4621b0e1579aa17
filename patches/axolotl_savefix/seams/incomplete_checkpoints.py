"""A run killed while it writes a checkpoint resumes by itself, and nothing of yours is destroyed (issue 37).

Axolotl's ``determine_last_checkpoint`` takes the highest ``checkpoint-N`` folder, complete or not,
and Transformers then fails on the missing ``trainer_state.json`` (or a truncated weight file),
every time, until someone deletes the folder by hand; its rotation also counts the broken folder.

Target ``determine_last_checkpoint`` (and its copies in ``axolotl.train`` and
``axolotl.cli.merge_sharded_fsdp_weights``):

* with ``auto_resume_from_checkpoints``, at train start: the ``checkpoint-N`` folders are walked
  newest first and judged by what their own save wrote (:mod:`rules.checkpoints`); the first
  complete one is resumed from (with several processes, the job's decision, which
  ``seams.several_nodes`` takes before this runs, judges instead). Each incomplete folder newer than it
  is renamed ``incomplete-checkpoint-N``; older folders are not read, nor touched. A folder is
  deleted only when it is provably this package's own cut save (:func:`rules.records.own_cut`),
  within issue 19's bound (:mod:`rules.cleanup`); anything else it leaves, with one line saying
  where and how to reclaim the space;
* with auto-resume off, and at the end of a sharded FSDP run or in the merge command
  (``update=False``): nothing on disk changes; a line when the folder Axolotl picked is incomplete;
* an explicit ``resume_from_checkpoint`` naming a save that did not finish is an error naming what
  it lacks and the newest complete checkpoint; a folder without ``trainer_state.json`` that no save
  of this package started is what Transformers takes as a warm start: it goes on, with one line.

The files judged are the ones the save protocol writes (``_infra.journal``: the pending-save
record, the run record, the commit marker). Upstream: docs/upstream/series (a slim version: auto-resume only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._infra import hooks, journal
from .._infra.collectives import local_main, taken
from .._infra.log import log_once
from ..rules import checkpoints, cleanup, run_match

NAME = "incomplete_checkpoints"


class IncompleteCheckpointError(ValueError):
    """``resume_from_checkpoint`` names a checkpoint that cannot be resumed from."""

    __module__ = "axolotl_savefix"  # its public name: tracebacks and the guide say axolotl_savefix.IncompleteCheckpointError


def _describe(problems: list[str] | tuple[str, ...]) -> str:
    return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def _delete_own(folder: Path) -> bool:
    """Delete ``folder`` when it is, checked again now, this package's own cut save (:func:`checkpoints.own_cut`)."""
    if not checkpoints.own_cut(folder):
        return False
    return journal.delete_own(folder)


def set_aside_incomplete(
    output_dir: str, judge: Callable[[Path], list[str]] = checkpoints.missing, *, acts: bool | None = None
) -> tuple[Path | None, list[tuple[Path, list[str], Path | str | None]]]:
    """The auto-resume's scan: the newest complete checkpoint; each newer incomplete one, what it lacks, what became of it.

    Newest first, stopping at the first complete checkpoint: older folders are not read, and never
    touched (:func:`rules.cleanup.scan`). The policy is :func:`rules.cleanup.cleanup` (docs/user-guide.md,
    "What a resume does with incomplete folders"):
    each incomplete ``checkpoint-N`` newer than the one the resume takes is renamed to
    ``incomplete-checkpoint-N``; a folder is deleted only when it is provably this package's own cut
    save (:func:`checkpoints.own_cut`, checked again right before); any other set-aside folder is left,
    with one line saying where and how to reclaim it. What became of each incomplete ``checkpoint-N``:
    the ``Path`` it was moved to, a ``str`` (deleted, and why), or None (not this process's to move).
    ``judge``: what a folder lacks (default :func:`checkpoints.missing`, one disk; several processes pass
    :meth:`rules.decision.Verdict.judge`, the job's verdict). ``acts``: whether this process
    renames and deletes (default: the node's main process).
    """
    found = cleanup.scan(output_dir, judge)
    newest, plan, sizes = found.newest, found.plan, found.sizes
    incomplete = [(p, lacks) for p, lacks in found.walked if lacks]
    if not (local_main() if acts is None else acts):
        return newest, [(folder, lacks, None) for folder, lacks in incomplete]
    journal.finish_deletes(output_dir)  # a delete of the package's own that a kill interrupted
    fates: dict[Path, Path | str | None] = {}
    for folder, why in plan.delete:
        if _delete_own(folder):
            fates[folder] = why
            if folder.name.startswith(checkpoints.QUARANTINE_PREFIX):
                log_once(f"deleted:{folder}", f"deleted {folder.name}: {why}", logging.WARNING)
        elif folder in dict(incomplete):
            plan = cleanup.Cleanup(plan.newest, (*plan.set_aside, (folder, why)), plan.delete, plan.kept)
    for folder, _ in plan.set_aside:
        try:
            fates[folder] = checkpoints.quarantine(folder)
        except FileNotFoundError:  # another node's main process (shared disk) moved it first
            fates[folder] = None
    if plan.kept:
        total = sum(sizes.get(p, 0) for p in plan.kept)
        log_once(
            f"kept-aside:{output_dir}",
            f"{len(plan.kept)} set-aside folder(s) left in output_dir ({', '.join(p.name for p in plan.kept)}; {total} bytes): "
            "not provably cut saves of this package, so it never deletes them; inspect them, then delete them "
            f"(rm -r {Path(output_dir) / checkpoints.QUARANTINE_PREFIX}{checkpoints.PREFIX}...) to free the space",
            logging.WARNING,
        )
    return newest, [(folder, lacks, fates.get(folder)) for folder, lacks in incomplete]


def _fate(folder: Path, target: Path | str | None) -> str:
    if isinstance(target, str):
        return f"deleted ({target})"
    name = target.name if target else checkpoints.QUARANTINE_PREFIX + folder.name
    own = "this package's own save, never committed" if target and checkpoints.own_cut(target) else "nothing in it removed"
    return f"moved to {name} ({own}; delete it once inspected to free the space)"


def check_explicit(path: str, output_dir: str | None) -> None:
    """``resume_from_checkpoint: path``: stop when it is a save that did not finish, before anything loads.

    A folder without ``trainer_state.json`` and without this package's pending-save record is what
    Transformers takes as a warm start (the weights, step 0): it goes on as stock's, with one line.
    """
    folder = Path(path)
    judged = checkpoints.judge(folder) if folder.is_dir() else checkpoints.Judgment()
    for note in judged.notes:
        log_once(f"bad-input:{note}", note, logging.WARNING)
    lacks = list(judged.lacks)
    if not lacks:
        return
    if all(lack.startswith(f"{checkpoints.STATE} (never written") for lack in lacks) and checkpoints.read_pending(folder) is None:
        log_once(
            f"warm-start:{folder}",
            f"resume_from_checkpoint: {path} has no {checkpoints.STATE}: Transformers loads its weights and starts at step 0 "
            "(a warm start, as stock Axolotl does)",
            logging.WARNING,
        )
        return
    newest = checkpoints.newest_complete(output_dir) if output_dir else None
    fix = (
        f"Set resume_from_checkpoint: {newest} (the newest complete checkpoint in output_dir)"
        if newest
        else "output_dir holds no complete checkpoint: remove resume_from_checkpoint to start from the beginning"
    )
    raise IncompleteCheckpointError(
        f"resume_from_checkpoint: {path} is not a complete checkpoint, it lacks {_describe(lacks)}. {fix}, or remove "
        "resume_from_checkpoint and set auto_resume_from_checkpoints: true to resume from the newest complete one."
    )


def _judge_noting(folder: Path) -> list[str]:
    """:func:`checkpoints.judge` on one disk; its notes (bad input set aside) logged once."""
    judged = checkpoints.judge(folder)
    for note in judged.notes:
        log_once(f"bad-input:{note}", note, logging.WARNING)
    return list(judged.lacks)


def _warn_if_incomplete(folder: str) -> None:
    """Axolotl's own pick where nothing is resumed (the merge of sharded weights): a line when it is incomplete."""
    lacks = checkpoints.missing(folder) if Path(folder).is_dir() else []
    if lacks:
        newest = checkpoints.newest_complete(Path(folder).parent)
        log_once(
            f"merge-incomplete:{folder}",
            f"{Path(folder).name}, the newest checkpoint-N, lacks {_describe(lacks)}: reading it may fail"
            + (f"; {newest.name} is the newest complete one" if newest else "")
            + " (nothing was moved or deleted)",
            logging.WARNING,
        )


def _determine(determine: Any, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """``determine_last_checkpoint``'s layer: the auto-resume's scan and the job's decision (module docstring)."""
    explicit = cfg.get("resume_from_checkpoint")
    if explicit:
        check_explicit(str(explicit), cfg.get("output_dir"))
        return determine(cfg, *args, **kwargs)
    update = kwargs.get("update", args[0] if args else True)
    if not run_match.auto_resumes(cfg, update):
        # no auto-resume here (off, or the merge of sharded weights): nothing on disk changes
        result = determine(cfg, *args, **kwargs)
        if result is not None and not update:
            _warn_if_incomplete(str(result))
        return result
    verdict = taken()  # several processes: the job's decision (seams.several_nodes); else this disk's own
    judge = verdict.judge if verdict is not None else _judge_noting
    for note in verdict.notes if verdict is not None else ():
        log_once(f"bad-input:{note}", note, logging.WARNING)
    newest, incomplete = set_aside_incomplete(cfg.output_dir, judge, acts=verdict.walked if verdict is not None else None)
    result = determine(cfg, *args, **kwargs)
    moved = {str(p) for p, _, _ in incomplete}
    if result is not None and str(result) in moved:
        # another rank: it listed the folders before the main process moved one aside
        result = str(newest) if newest else None
        if cfg.get("resume_from_checkpoint") in moved:
            cfg["resume_from_checkpoint"] = result
    for folder, lacks, target in incomplete:
        resumed = "resuming from " + (newest.name if newest else "nothing (no complete checkpoint)")
        log_once(
            f"incomplete:{folder}",
            f"{folder.name} is incomplete: it lacks {_describe(lacks)}; {_fate(folder, target)}; {resumed}",
            logging.WARNING,
        )
    return result


def install() -> None:
    hooks.add(hooks.Layer("determine_last_checkpoint", NAME, 20, _determine))
