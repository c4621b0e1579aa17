"""Transformers issue 40690: a mid-epoch resume in epoch >= 1 skips and trains on epoch 0's sample order.

Here the calls Transformers' resume makes on the resumed epoch, in its order before 5.0:
``set_epoch(epoch)`` on Accelerate's prepared (seedable, shuffled) dataloader, then
``transformers.trainer.skip_first_batches(dataloader, n)``, then iterating it. The batches must be
the rest of that epoch's order. tests/e2e/test_resume_fidelity.py measures the same on real runs.
"""

import inspect

import pytest
import torch
import transformers
import transformers.trainer
from accelerate import Accelerator, DataLoaderConfiguration

import axolotl_savefix
from axolotl_savefix import seams
from axolotl_savefix._infra import targets

BEFORE_FIX = targets.present("skip_first_batches")  # the back-port's declared range: Transformers < 5.0
ONLY_BACKPORTS = {name: name == "backports" for name in seams.NAMES}
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


def _resumed_5(dataloader, epoch) -> list[int]:
    skipped = transformers.trainer.skip_first_batches(dataloader, SKIP)  # Transformers >= 5.0: the skip first ...
    skipped.set_epoch(epoch)  # ... then set_epoch, on the dataloader that trains
    return _order(skipped)


def _resumed(dataloader, epoch) -> list[int]:
    dataloader.set_epoch(epoch)  # Transformers < 5.0: set_epoch first ...
    return _order(transformers.trainer.skip_first_batches(dataloader, SKIP))  # ... then the skip


@pytest.mark.parametrize("epoch", [1, 2])
def test_stock_resume_order_before_and_after_transformers_5(dataloader, epoch):
    """Stock: before 5.0 the resumed epoch trains on epoch 0's batches after the skipped ones (the defect,
    recorded); from 5.0 on, on its own epoch's (Transformers calls ``set_epoch`` after the skip)."""
    epochs = [_epoch(dataloader, e) for e in range(epoch + 1)]
    assert epochs[0] != epochs[epoch]  # shuffled per epoch: order matters
    if BEFORE_FIX:
        assert _resumed(dataloader, epoch) == epochs[0][SKIP * BATCH :]
    else:
        assert _resumed_5(dataloader, epoch) == epochs[epoch][SKIP * BATCH :]


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_patched_resume_trains_on_the_resumed_epochs_order(dataloader, epoch):
    """With the patch, the resumed epoch's order on every release; before 5.0 the wrapper does it, from 5.0
    on nothing is patched (the very same function stays)."""
    expected = _epoch(dataloader, epoch)[SKIP * BATCH :]
    original = transformers.trainer.skip_first_batches
    axolotl_savefix.apply(**ONLY_BACKPORTS)
    if BEFORE_FIX:
        assert transformers.trainer.skip_first_batches is not original
        assert transformers.trainer.skip_first_batches.__savefix_original__ is not None
        assert _resumed(dataloader, epoch) == expected
    else:
        assert transformers.trainer.skip_first_batches is original
        assert _resumed_5(dataloader, epoch) == expected  # 5.x's own call order
    assert _epoch(dataloader, epoch + 1) != _epoch(dataloader, epoch)  # the epochs after it still change order


def test_transformers_call_order_is_the_one_the_version_rule_assumes():
    """The back-port's declared range (before 5.0) tied to the installed code: ``set_epoch`` before the skip iff before 5.0."""
    trainer = transformers.Trainer
    source = "".join(inspect.getsource(getattr(trainer, n)) for n in ("_inner_training_loop", "_run_epoch") if hasattr(trainer, n))
    skip, set_epoch = source.find("skip_first_batches("), source.find(".set_epoch(")
    assert skip >= 0 and set_epoch >= 0, "Transformers' resume no longer calls skip_first_batches and set_epoch here"
    assert (set_epoch < skip) == BEFORE_FIX


def test_applied_twice_wraps_once_and_revert_restores_the_very_function():
    original = transformers.trainer.skip_first_batches
    axolotl_savefix.apply(**ONLY_BACKPORTS)
    once = transformers.trainer.skip_first_batches
    axolotl_savefix.apply(**ONLY_BACKPORTS)
    assert transformers.trainer.skip_first_batches is once
    assert (once is not original) == BEFORE_FIX
    axolotl_savefix.revert()
    assert transformers.trainer.skip_first_batches is original
