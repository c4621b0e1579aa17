"""Test-only Axolotl plugin: lets a 2-process FSDP2 run train on the CPU (gloo). Never shipped.

Three bends, each needed on a machine without a GPU (observed on Axolotl 0.19.0, accelerate
1.13, torch 2.13 CPU; see ../shared/ENGINES.md):

1. Axolotl builds its parallelism device mesh with a hard-coded ``"cuda"`` device type
   (``axolotl.utils.distributed.build_parallelism_config`` calls accelerate's
   ``ParallelismConfig.build_device_mesh("cuda")``). Without the change to ``"cpu"``, every
   rank fails with ``AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'``.
2. Axolotl maps each rank's model to a CUDA index (``device_map = {"": LOCAL_RANK}``); the
   model loads on the CPU instead (the DDP shim's bend, :mod:`cpu_ddp_shim`).
3. accelerate turns on ``DistributedType.FSDP`` only for GPU-like device families, never for
   ``MULTI_CPU``: the FSDP plugin is dropped silently, and the run trains as plain DDP (and
   fails only at the final save). When the state comes up ``MULTI_CPU`` with an FSDP plugin,
   it is made ``FSDP`` with that plugin, as accelerate does for a GPU.

The test checks that the run really was FSDP from what it wrote (``pytorch_model_fsdp_0/``
and ``optimizer_0/`` in each checkpoint, no ``model.safetensors``), not from this shim.
"""

import cpu_ddp_shim
import torch
from accelerate.parallelism_config import ParallelismConfig
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from axolotl.integrations.base import BasePlugin

_build_device_mesh = ParallelismConfig.build_device_mesh
_state_init = AcceleratorState.__init__


def _build_device_mesh_on_cpu(self, device_type):  # bend 1
    return _build_device_mesh(self, "cpu" if not torch.cuda.is_available() else device_type)


def _state_init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs):  # bend 3
    _state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


class CpuFsdpShim(BasePlugin):
    def register(self, cfg):  # noqa: ARG002
        ParallelismConfig.build_device_mesh = _build_device_mesh_on_cpu
        AcceleratorState.__init__ = _state_init_keeping_fsdp
        cpu_ddp_shim.CpuDdpShim().register(cfg)  # bend 2
