"""Test-only Axolotl plugin: lets a 2-process DDP run load its model on the CPU.

For ``world_size > 1`` Axolotl's ``normalize_config`` sets ``device_map = {"": LOCAL_RANK}``
(GPU n), and model loading fails where there is no GPU. Plugins are registered in every rank
before the model loads, so this plugin wraps ``ModelLoader._set_device_map_config`` to load
on the CPU when CUDA is absent. Used only by tests/e2e/test_ddp.py; never shipped.
"""

import torch
from axolotl.integrations.base import BasePlugin
from axolotl.loaders.model import ModelLoader

_original = ModelLoader._set_device_map_config


def _cpu_device_map(self):
    _original(self)
    if not torch.cuda.is_available():
        self.model_kwargs["device_map"] = "cpu"


class CpuDdpShim(BasePlugin):
    def register(self, cfg):  # noqa: ARG002
        ModelLoader._set_device_map_config = _cpu_device_map
