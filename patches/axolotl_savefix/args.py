"""Config keys axolotl-savefix reads (``savefix_disk_margin``, ``save_on_each_node``, ``savefix_resume_anyway``) and their checks.

Not merged into Axolotl's schema through ``get_input_args`` (that costs every run
a rebuild of the whole schema): each patch that reads a key wraps ``validate_config``
with :func:`carrying`, which checks the key before Axolotl validates and puts it back
afterwards (Axolotl's schema drops keys it does not know).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ._patching import wraps
from .checks import SaveFixConfigError

KEY = "savefix_disk_margin"
ON_EACH_NODE = "save_on_each_node"  # Transformers' TrainingArguments key, which Axolotl's schema lacks
RESUME_ANYWAY_KEY = "savefix_resume_anyway"


class SaveFixArgs(BaseModel):
    """Input args for axolotl-savefix."""

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


def checked(cfg: Mapping[str, Any], key: str, model: type[BaseModel], fix: str) -> Any:
    """``cfg[key]`` validated by ``model``'s field ``key``; ``None`` when unset.

    Raises :class:`SaveFixConfigError` ``"<key>: <value> is not <fix>"`` when the field refuses it.
    """
    value = cfg.get(key)
    if value is None:
        return None
    try:
        return getattr(model(**{key: value}), key)
    except ValidationError:
        raise SaveFixConfigError(f"{key}: {value!r} is not {fix}") from None


def disk_margin(cfg: Mapping[str, Any]) -> float | None:
    """``savefix_disk_margin`` from a config, checked: ``None`` when unset."""
    return checked(
        cfg,
        KEY,
        SaveFixArgs,
        "a share of the free space. Set it to a number from 0 up to (not including) 1, for example 0.1 to "
        "leave 10% of output_dir's free space free, or remove it.",
    )


def save_on_each_node(cfg: Mapping[str, Any]) -> bool | None:
    """``save_on_each_node`` from a config, checked: ``None`` when unset."""
    return checked(
        cfg,
        ON_EACH_NODE,
        SaveFixArgs,
        "true or false. Set it to true where each node has its own output_dir (node-local disks), false or "
        "remove it where every node shares output_dir.",
    )


def resume_anyway(cfg: Mapping[str, Any]) -> bool | None:
    """``savefix_resume_anyway`` from a config, checked: ``None`` when unset.

    Raises :class:`SaveFixConfigError` naming the value when it is not true or false.
    """
    value = cfg.get(RESUME_ANYWAY_KEY)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise SaveFixConfigError(
            f"{RESUME_ANYWAY_KEY}: {value!r} is not true or false. Set it to true to resume from a checkpoint that "
            "does not match the run (past its end, other data or batches, no optimizer state), or remove it."
        )
    return value


def carrying(
    validate: Callable[..., Any],
    checks: Mapping[str, Callable[[Mapping[str, Any]], Any]],
    after: Callable[[Any, dict[str, Any]], None] | None = None,
) -> Callable[..., Any]:
    """Axolotl's ``validate_config`` with our keys checked before it and put back after it.

    ``checks``: config key -> a check of the raw config that raises :class:`SaveFixConfigError`
    (naming the key, the value and the fix) and returns the value to carry (``None``: unset,
    nothing put back). Checked first, so a bad value stops the run before Axolotl's schema,
    which drops keys it does not know. ``after(validated, carried)`` runs last, on Axolotl's
    validated config. Returns the wrapper (``functools.wraps`` of ``validate``).
    """

    @wraps(validate)
    def validate_config(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        carried = {key: check(cfg) for key, check in checks.items()}
        validated = validate(cfg, *args, **kwargs)
        for key, value in carried.items():
            if value is not None:
                validated[key] = value
        if after is not None:
            after(validated, carried)
        return validated

    return validate_config
