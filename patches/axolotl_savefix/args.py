"""The config keys SaveFixPlugin adds to Axolotl's schema (through ``get_input_args``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
