"""Every YAML key axolotl-savefix reads, defined once, with its check. Pure: standard library and pydantic.

Axolotl's schema drops keys it does not know, and merging a plugin's input args into it rebuilds
the whole schema on every run (about 0.18 s). So the keys are not merged: the seam that reads a key
checks it before Axolotl's ``validate_config`` (a bad value stops the run naming the key, the value
and the fix) and puts it back on the validated config (``_infra.hooks.carry``).

=============================  ===============================  ==========================================
key                            read by (seam)                   what it sets
=============================  ===============================  ==========================================
``savefix_disk_margin``        retention                        the free-space share an unset limit leaves
``save_on_each_node``          several_nodes                    Transformers' key, which Axolotl lacks
``savefix_resume_anyway``      resume_matches_run               a mismatched resume goes on, with a warning
``savefix_preemption_signal``  preemption                       another signal that saves and exits
``savefix_preemption_grace``   preemption                       seconds after the notice before exiting
=============================  ===============================  ==========================================
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Mapping
from typing import Any

from .checks import SaveFixConfigError

DISK_MARGIN = "savefix_disk_margin"
ON_EACH_NODE = "save_on_each_node"  # Transformers' TrainingArguments key, which Axolotl's schema lacks
RESUME_ANYWAY = "savefix_resume_anyway"
PREEMPTION_SIGNAL = "savefix_preemption_signal"
PREEMPTION_GRACE = "savefix_preemption_grace"
UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


@functools.cache
def schema() -> Any:
    """:class:`SaveFixArgs`, the keys as a pydantic model, built at first use: ``plan --steps-per-epoch`` needs no pydantic."""
    from pydantic import BaseModel, Field

    class SaveFixArgs(BaseModel):
        """Input args for axolotl-savefix (documented here, checked by the functions below)."""

        savefix_disk_margin: float | None = Field(
            default=None,
            ge=0.0,
            lt=1.0,
            json_schema_extra={
                "description": "Share of the free space in output_dir that an unset save_total_limit leaves free "
                "(default 0.1). Checkpoints that do not fit are rotated, newest kept, never fewer than 2."
            },
        )
        save_on_each_node: bool | None = Field(
            default=None,
            strict=True,
            json_schema_extra={
                "description": "Several nodes whose output_dir is not shared (node-local disks): every node's main "
                "process writes a whole checkpoint to its own output_dir, so that each node can resume from it. "
                "Transformers' TrainingArguments.save_on_each_node (default false); leave it off on shared storage."
            },
        )
        savefix_resume_anyway: bool | None = Field(
            default=None,
            json_schema_extra={
                "description": "Resume even from a checkpoint that does not match the run (past its last step, other "
                "data or batches, no optimizer state): each stop becomes a warning, as stock resumes. Default false."
            },
        )
        savefix_preemption_signal: str | int | None = Field(
            default=None,
            json_schema_extra={
                "description": "A signal, besides SIGTERM and SIGINT, that saves a checkpoint and exits 128 + its "
                "number (e.g. SIGUSR1, for SLURM's --signal=USR1@90)."
            },
        )
        savefix_preemption_grace: float | None = Field(
            default=None,
            gt=0.0,
            json_schema_extra={
                "description": "Seconds after the first signal after which the process exits at once, saved or not "
                "(default: no deadline; a second signal always exits at once)."
            },
        )

    return SaveFixArgs


def __getattr__(name: str) -> Any:
    if name == "SaveFixArgs":
        return schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checked(cfg: Mapping[str, Any], key: str, fix: str) -> Any:
    """``cfg[key]`` validated by :func:`schema`'s field ``key``; ``None`` when unset.

    Raises :class:`SaveFixConfigError` ``"<key>: <value> is not <fix>"`` when the field refuses it.
    """
    from pydantic import ValidationError

    value = cfg.get(key)
    if value is None:
        return None
    try:
        return getattr(schema()(**{key: value}), key)
    except ValidationError:
        raise SaveFixConfigError(f"{key}: {value!r} is not {fix}") from None


def disk_margin(cfg: Mapping[str, Any]) -> float | None:
    """``savefix_disk_margin`` from a config, checked: ``None`` when unset."""
    return checked(
        cfg,
        DISK_MARGIN,
        "a share of the free space. Set it to a number from 0 up to (not including) 1, for example 0.1 to "
        "leave 10% of output_dir's free space free, or remove it.",
    )


def save_on_each_node(cfg: Mapping[str, Any]) -> bool | None:
    """``save_on_each_node`` from a config, checked: ``None`` when unset."""
    return checked(
        cfg,
        ON_EACH_NODE,
        "true or false. Set it to true where each node has its own output_dir (node-local disks), false or "
        "remove it where every node shares output_dir.",
    )


def resume_anyway(cfg: Mapping[str, Any]) -> bool | None:
    """``savefix_resume_anyway`` from a config, checked: ``None`` when unset.

    Raises :class:`SaveFixConfigError` naming the value when it is not true or false.
    """
    value = cfg.get(RESUME_ANYWAY)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise SaveFixConfigError(
            f"{RESUME_ANYWAY}: {value!r} is not true or false. Set it to true to resume from a checkpoint that "
            "does not match the run (past its end, other data or batches, no optimizer state), or remove it."
        )
    return value


def parse_signal(value: Any) -> signal.Signals | None:
    """``SIGUSR1``, ``USR1`` or ``10`` -> ``signal.SIGUSR1``; ``None`` when unset.

    Raises :class:`SaveFixConfigError` naming the key for an unknown or uncatchable signal.
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            sig = signal.Signals(int(value))
        else:
            name = str(value).strip().upper()
            sig = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise SaveFixConfigError(
            f"{PREEMPTION_SIGNAL}: {value!r} is not a signal. Set it to a signal name such as SIGUSR1 or SIGUSR2 "
            "(the one your scheduler sends, e.g. SLURM's --signal=USR1@90), or remove it."
        ) from None
    if sig in UNCATCHABLE:
        raise SaveFixConfigError(
            f"{PREEMPTION_SIGNAL}: {sig.name} cannot be caught by any process. Set it to a signal such as SIGUSR1, "
            "and have the scheduler send it before the kill (SLURM: --signal=USR1@90)."
        )
    return sig


def preemption_signal(cfg: Mapping[str, Any]) -> Any:
    """``savefix_preemption_signal`` as written, once :func:`parse_signal` accepts it (``None`` when unset)."""
    parse_signal(cfg.get(PREEMPTION_SIGNAL))
    return cfg.get(PREEMPTION_SIGNAL)


def grace_seconds(cfg: Mapping[str, Any]) -> float | None:
    """``savefix_preemption_grace`` (seconds) from a config, checked; ``None`` when unset."""
    return checked(
        cfg,
        PREEMPTION_GRACE,
        "a number of seconds above 0. Set it a little under your scheduler's grace (e.g. 80 for SLURM's "
        "--signal=TERM@90), or remove it to wait for the checkpoint.",
    )
