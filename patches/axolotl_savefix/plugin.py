"""The Axolotl plugin: ``plugins: [axolotl_savefix.SaveFixPlugin]``.

Axolotl registers plugins in every rank before it validates and normalizes the
config, so applying the patches in :meth:`SaveFixPlugin.register` is early
enough for ``validate_config``, ``normalize_config`` and the trainer builder.

:meth:`get_input_args` returns ``None``: a plugin's input args make Axolotl
build two subclasses of its whole config schema on every ``validate_config``
(about 0.18 s a run). The package's keys are checked and carried through
``validate_config`` by the seams that read them instead
(:class:`axolotl_savefix.rules.keys.SaveFixArgs` documents them).
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from . import apply


class SaveFixPlugin(BasePlugin):
    """Exact ``saves_per_epoch`` / ``evals_per_epoch`` steps and a ``save_total_limit`` that keeps them."""

    def get_input_args(self) -> None:
        return None

    def register(self, cfg: dict) -> None:  # noqa: ARG002 - Axolotl's hook signature
        apply()
