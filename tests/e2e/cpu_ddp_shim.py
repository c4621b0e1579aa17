"""Test-only Axolotl plugin: lets a 2-process DDP run load its model on the CPU.

For ``world_size > 1`` Axolotl's ``normalize_config`` sets ``device_map = {"": LOCAL_RANK}``
(GPU n), and model loading fails where there is no GPU. Plugins are registered in every rank
before the model loads, so this plugin wraps ``ModelLoader._set_device_map_config`` to load
on the CPU when CUDA is absent.

A resume of such a run needs one more bend: its optimizer and RNG files hold storages tagged
``cpu:0`` (the rank's device as accelerate names it), and ``torch.load`` knows how to restore
``cpu`` but not ``cpu:0`` ("don't know how to restore data location of
torch.storage.UntypedStorage (tagged with cpu:0)", stock and patched alike). A deserializer for
``cpu:N`` keeps such storages on the CPU. Test-only (DDP, FSDP and preemption tests); never shipped.
"""

import torch
from axolotl.integrations.base import BasePlugin
from axolotl.loaders.model import ModelLoader

_original = ModelLoader._set_device_map_config


def _cpu_device_map(self):
    _original(self)
    if not torch.cuda.is_available():
        self.model_kwargs["device_map"] = "cpu"


def _no_tag(obj):
    return None


def _restore_cpu_index(obj, location):
    return obj if location.startswith("cpu:") else None


def _no_p2p() -> bool:
    return False


class CpuDdpShim(BasePlugin):
    def register(self, cfg):  # noqa: ARG002
        ModelLoader._set_device_map_config = _cpu_device_map
        if not torch.cuda.is_available():
            import axolotl.utils.environment as environment

            environment.check_cuda_p2p_support = _no_p2p  # read at call time by check_cuda_p2p_ib_support
        registry = torch.serialization._package_registry
        if all(entry[2] is not _restore_cpu_index for entry in registry):
            # a priority of its own: register_package sorts (priority, tagger, deserializer) tuples
            free = next(p for p in range(11, 100) if p not in {entry[0] for entry in registry})
            torch.serialization.register_package(free, _no_tag, _restore_cpu_index)
