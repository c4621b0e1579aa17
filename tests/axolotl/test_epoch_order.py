"""Transformers issue 40690: a mid-epoch resume in epoch >= 1 skips and trains on epoch 0's sample order.

Here the calls Transformers' resume makes on the resumed epoch, in its order before 5.0:
``set_epoch(epoch)`` on Accelerate's prepared (seedable, shuffled) dataloader, then
``transformers.trainer.skip_first_batches(dataloader, n)``, then iterating it. The batches must be
the rest of that epoch's order. tests/e2e/test_resume_fidelity.py measures the same on real runs.
"""

import pytest
import torch
import transformers
import transformers.trainer
from accelerate import Accelerator, DataLoaderConfiguration
from packaging.version import Version

from axolotl_savefix import resume

BEFORE_FIX = Version(transformers.__version__) < Version(resume.EPOCH_ORDER_FIXED)
SAMPLES, BATCH, SKIP = 24, 2, 5


@pytest.fixture(scope="module")
def dataloader():
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    torch.manual_seed(42)
    loader = torch.utils.data.DataLoader(list(range(SAMPLES)), batch_size=BATCH, shuffle=True)
    return accelerator.prepare(loader)


def _order(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch]


def _epoch(dataloader, epoch) -> list[int]:
    dataloader.set_epoch(epoch)
    return _order(dataloader)


def _resumed(dataloader, epoch) -> list[int]:
    dataloader.set_epoch(epoch)  # Transformers < 5.0: set_epoch first ...
    return _order(transformers.trainer.skip_first_batches(dataloader, SKIP))  # ... then the skip


@pytest.mark.skipif(not BEFORE_FIX, reason=f"Transformers {transformers.__version__} calls set_epoch after the skip")
def test_stock_resume_in_epoch_1_replays_epoch_0s_order(dataloader):
    """The defect, recorded: the resumed epoch 1 trains on epoch 0's batches after the skipped ones."""
    epochs = [_epoch(dataloader, e) for e in (0, 1)]
    assert epochs[0] != epochs[1]  # shuffled per epoch: order matters
    assert _resumed(dataloader, 1) == epochs[0][SKIP * BATCH :]


@pytest.mark.skipif(not BEFORE_FIX, reason=f"Transformers {transformers.__version__} calls set_epoch after the skip")
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_patched_resume_trains_on_the_resumed_epochs_order(dataloader, epoch):
    expected = _epoch(dataloader, epoch)[SKIP * BATCH :]
    resume.apply_epoch_order()
    assert transformers.trainer.skip_first_batches.__savefix_original__ is not None
    assert _resumed(dataloader, epoch) == expected
    assert _epoch(dataloader, epoch + 1) != _epoch(dataloader, epoch)  # the epochs after it still change order


@pytest.mark.skipif(BEFORE_FIX, reason=f"Transformers {transformers.__version__} needs the patch")
def test_fixed_transformers_is_left_alone():
    original = transformers.trainer.skip_first_batches
    resume.apply_epoch_order()
    assert transformers.trainer.skip_first_batches is original
