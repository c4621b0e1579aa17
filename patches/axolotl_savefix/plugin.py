"""The Axolotl plugin: ``plugins: [axolotl_savefix.SaveFixPlugin]``.

Axolotl registers plugins in every rank before it validates and normalizes the
config, so applying the patches in :meth:`SaveFixPlugin.register` is early
enough for ``normalize_config`` and the trainer builder.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from . import apply


class SaveFixPlugin(BasePlugin):
    """Exact ``saves_per_epoch`` checkpoints and a ``save_total_limit`` that keeps them."""

    def register(self, cfg: dict) -> None:  # noqa: ARG002 - Axolotl's hook signature
        apply()
