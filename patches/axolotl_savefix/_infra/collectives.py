"""The cross-rank collectives: the resume decision's and the preemption notice's. Each is one ``all_reduce(MAX)``.

No Axolotl nor Transformers import (a 16-process test starts it in seconds):

* :func:`agree_on_resume`: every rank runs :func:`rules.decision.protocol` over one gloo group of its
  own, a few int64 per round;
* :class:`NoticeFlag`: at the end of every optimizer step, one int32 (the signal number a rank
  received, 0 for none) on the job's own group, so every rank stops at the same step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..rules import decision
from .log import log_once

__all__ = ["NoticeFlag", "NotSharedOutputDirError", "ResumeAgreementError", "agree_on_resume", "node", "world", "writes_markers"]

AGREE_SECONDS = 600.0  # how long a rank waits for the others (SAVEFIX_AGREE_SECONDS overrides)


class NotSharedOutputDirError(RuntimeError):
    """A checkpoint was saved whole, but some node cannot load it from its own ``output_dir``."""

    __module__ = "axolotl_savefix"  # its public name: tracebacks and the guide say axolotl_savefix.NotSharedOutputDirError


class ResumeAgreementError(RuntimeError):
    """The ranks could not take the resume decision together in time."""

    __module__ = "axolotl_savefix"  # its public name: tracebacks and the guide say axolotl_savefix.ResumeAgreementError


def node() -> int:
    """This node's index: torchrun's GROUP_RANK (NODE_RANK for other launchers); -1 when neither is set."""
    value = os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or ""
    return int(value) if value.isdigit() else -1


def _all_reduce_max(group: Any) -> Callable[[list[int]], list[int]]:
    """The decision's one collective: the element-wise maximum of every rank's int64 vector (gloo ``all_reduce``)."""
    import torch
    import torch.distributed as dist

    def reduce(vector: list[int]) -> list[int]:
        tensor = torch.tensor(vector, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
        return tensor.tolist()

    return reduce


# Whether this process writes commit markers (its node's walker that judged its own disk); None: not decided
# (then every node's main process writes one).
_writes_markers: bool | None = None
_verdict: decision.Verdict | None = None  # the decision this start took (None: one process, or not taken together)


def agree_on_resume(output_dir: str) -> decision.Verdict | None:
    """The resume decision, taken by every rank together (``None`` for one process: its own disk decides).

    :func:`decision.protocol` on a gloo group of its own whose collectives time out after
    ``SAVEFIX_AGREE_SECONDS`` (default 600). Axolotl calls ``determine_last_checkpoint`` after it
    built the trainer, so the default process group exists by then (accelerate's ``PartialState``
    made it); where it does not, ``PartialState()`` makes it from the launcher's environment.
    Raises :class:`ResumeAgreementError` when a rank does not come in time.
    """
    global _writes_markers, _verdict
    _verdict = None
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()
    rank = int(os.environ.get("RANK", "0") or 0)
    me = decision.Rank(rank, world, Path(output_dir), walker=int(os.environ.get("LOCAL_RANK", "0") or 0) == 0, node=node())
    seconds = float(os.environ.get("SAVEFIX_AGREE_SECONDS") or AGREE_SECONDS)
    try:
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=seconds))
        verdict = decision.run(me, _all_reduce_max(group))
        dist.destroy_process_group(group)
    except Exception as error:  # a rank that died or never came: gloo's error, or its timeout
        raise ResumeAgreementError(
            f"the {world} ranks could not agree on the checkpoint to resume from within {seconds:.0f} s "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Check that every node "
            "runs the same command; set SAVEFIX_AGREE_SECONDS to wait longer."
        ) from error
    _writes_markers, _verdict = verdict.walked, verdict
    if verdict.lacks and not verdict.error:
        log_once(
            "agreed",
            f"resume decision taken by all {world} ranks: "
            + (f"checkpoint-{verdict.step}" if verdict.step is not None else "no checkpoint every rank can load"),
        )
    return verdict


def forget() -> None:
    """Drop the decision and the marker writers this process took (``axolotl_savefix.revert``)."""
    global _writes_markers, _verdict
    _writes_markers, _verdict = None, None


def taken() -> decision.Verdict | None:
    """The decision :func:`agree_on_resume` took in this process at this start (None: one process, or none taken)."""
    return _verdict


def local_main() -> bool:
    """Whether this process is its node's main one (``LOCAL_RANK`` 0): the one that changes files on the node's disk."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0


def writes_markers() -> bool | None:
    """Whether this process writes commit markers: it judged its own disk in the decision; None before one."""
    return _writes_markers


def world() -> int:
    """The job's world size from torch.distributed (1 where it is not initialized)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


class NoticeFlag:
    """The largest signal number any rank received: one ``all_reduce(MAX)`` of one int32 where world > 1.

    The tensor is made once, on the device the backend needs (nccl: the rank's device; else the CPU),
    and the world size is read once: asked every step it cost 17 ms over 600 steps (bench -- accounting).
    """

    def __init__(self) -> None:
        self._flag: Any = None
        self._world: int | None = None

    def agree(self, local: int, device: Any = None) -> int:
        if self._world is None:
            self._world = world()  # once: the process group is set up by the first step
        if self._world <= 1:
            return local
        import torch
        import torch.distributed as dist

        if self._flag is None:
            place = device if dist.get_backend() == "nccl" and device is not None else torch.device("cpu")
            self._flag = torch.zeros(1, dtype=torch.int32, device=place)
        self._flag.fill_(local)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        return int(self._flag.item())
