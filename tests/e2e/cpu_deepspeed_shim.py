"""Test-only Axolotl plugin: lets a 2-process DeepSpeed ZeRO-2/ZeRO-3 run train on the CPU (gloo). Never shipped.

Why the earlier CPU attempt was not faithful (observed on Axolotl 0.19.0, accelerate 1.13,
Transformers 5.16.1, DeepSpeed 0.19.8, torch 2.13 CPU; read in accelerate/state.py):
``PartialState.__init__`` asks ``_prepare_backend(cpu=False)`` for the backend. With
``LOCAL_RANK`` set and ``cpu`` false it knows only accelerator families (nccl for CUDA, xccl,
hccl, ...); on a machine with none it returns ``(None, DistributedType.NO)``. The DeepSpeed
branch then initializes DeepSpeed's process group (gloo, world size 2: ``DS_ACCELERATOR=cpu``)
but ``backend`` stays ``None``, so the "No backend == no distributed training" branch sets
``num_processes = 1`` and ``process_index = 0`` on every rank, and only then
``distributed_type = DEEPSPEED``. Transformers' ``TrainingArguments.world_size`` and
``process_index`` read those: every rank believed it was the only one and the main one,
accelerate did not shard the data loader (each rank walked the whole data set: 30 steps per
epoch instead of 15), and DeepSpeed's ``train_batch_size`` (micro x accumulation x its own
world, 2) disagreed with Transformers' (world 1) for ``"auto"`` values. Without bend 1 (the DDP
device map bend only, Axolotl's zero2.json), both ranks stop at DeepSpeed's engine setup with
``AssertionError: Check batch related parameters. train_batch_size is not equal to
micro_batch_per_gpu * gradient_acc_step * world_size 2 != 2 * 1 * 2``.
(``ACCELERATE_USE_CPU`` cannot help: with ``cpu=True`` accelerate skips DeepSpeed altogether.)

Bends, each needed only where torch sees no CUDA device (on a GPU this plugin changes nothing):

1. ``PartialState._prepare_backend`` returns ``gloo`` as the backend where it found none and
   the run is a DeepSpeed one launched by torchrun (``ACCELERATE_USE_DEEPSPEED``, ``LOCAL_RANK``
   set, not ``cpu``). ``gloo`` is the backend DeepSpeed's CPU accelerator itself initializes
   (its ``communication_backend_name``) and the one torch's CPU tensors support; on a GPU
   accelerate returns ``nccl`` here. The distributed type is left as accelerate found it (it
   becomes ``DEEPSPEED`` a few lines later, as on a GPU). With a backend, accelerate reads
   ``num_processes`` and ``process_index`` from the initialized process group: 2 and the
   rank, as on a GPU. Nothing else in the DeepSpeed path changes.
2. Axolotl maps each rank's model to a CUDA index (``device_map = {"": LOCAL_RANK}``) for
   ZeRO-2; the model loads on the CPU instead, and a resume restores storages tagged ``cpu:N``
   (the DDP shim's bends, :mod:`cpu_ddp_shim`). ZeRO-3 deletes the device map itself.

The test checks that the run really was a distributed DeepSpeed run from what it wrote (a
``global_stepN/`` folder with one ZeRO optimizer shard per rank, ``latest``, ``zero_to_fp32.py``,
and DeepSpeed's own step count and data-parallel world size in its model states file), and
that each rank walked its share of the data (Transformers' epoch at step 1), not from this shim.
"""

import os

import cpu_ddp_shim
import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from axolotl.integrations.base import BasePlugin

_prepare_backend = PartialState._prepare_backend


def _prepare_backend_gloo_for_deepspeed_on_cpu(self, cpu=False, sagemaker_dp=False, backend=None):  # bend 1
    found, distributed_type = _prepare_backend(self, cpu, sagemaker_dp, backend)
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if found is None and distributed_type == DistributedType.NO and launched and deepspeed and not cpu:
        if not torch.cuda.is_available():
            found = "gloo"
    return found, distributed_type


class CpuDeepSpeedShim(BasePlugin):
    def register(self, cfg):  # noqa: ARG002
        PartialState._prepare_backend = _prepare_backend_gloo_for_deepspeed_on_cpu
        cpu_ddp_shim.CpuDdpShim().register(cfg)  # bend 2
