"""CommitMarker on a real transformers.Trainer (tiny model, CPU, one process): each save ends with its commit marker."""

import json

import fixture
import pytest
from test_callback_trainer import Rows
from transformers import AutoTokenizer, LlamaForCausalLM, Trainer, TrainingArguments

from axolotl_savefix._infra import journal
from axolotl_savefix.rules import checkpoints


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fixture.build(tmp_path_factory.mktemp("fixture"))


def _train(model_dir, out, callbacks):
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2,
        learning_rate=1e-3, report_to=[], use_cpu=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=LlamaForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=Rows(8),
        callbacks=callbacks,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()


def test_every_save_ends_with_a_marker_naming_every_file_and_a_later_truncation_is_caught(model_dir, tmp_path):
    _train(model_dir, tmp_path / "stock", [])
    assert [p.name for p in checkpoints.checkpoints(tmp_path / "stock")] == ["checkpoint-2", "checkpoint-4"]
    assert not list((tmp_path / "stock").glob(f"*/{checkpoints.MARKER}"))  # stock writes none: judged by rules 1-4

    out = tmp_path / "patched"
    _train(model_dir, out, [journal.SaveFixCheckpointRecord(), journal.CommitMarker()])
    for folder in checkpoints.checkpoints(out):
        marker = json.loads((folder / checkpoints.MARKER).read_text())
        files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        files.pop(checkpoints.MARKER)
        assert marker["files"] == files and marker["global_step"] == checkpoints.step_of(folder)
        assert {"trainer_state.json", "model.safetensors", "optimizer.pt", "rng_state.pth"} <= set(files)
        newest = max((folder / name).stat().st_mtime_ns for name in files)
        assert (folder / checkpoints.MARKER).stat().st_mtime_ns >= newest  # written last
        assert checkpoints.missing(folder) == []
    weights = out / "checkpoint-4" / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size - 4)  # a disk fault after the save: the weights' header still parses
    assert checkpoints.missing(out / "checkpoint-4") == [
        f"model.safetensors ({size - 4} bytes, {size} when saved: truncated or changed since the save)"
    ]
    assert checkpoints.newest_complete(out).name == "checkpoint-2"


def test_a_marker_that_cannot_be_written_leaves_the_checkpoint_to_the_full_rule(tmp_path, monkeypatch):
    from types import SimpleNamespace

    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3}))

    def full_disk(folder, step, world_size, save_only_model, writer):
        (folder / f".{checkpoints.MARKER}.{writer}.tmp").write_text("")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "write_marker", full_disk)
    args = SimpleNamespace(world_size=1, output_dir=str(tmp_path), local_process_index=0, save_only_model=False)
    journal.CommitMarker().on_save(args, SimpleNamespace(global_step=3), None)  # no traceback: the save stands
    assert sorted(p.name for p in folder.iterdir()) == ["trainer_state.json"]  # its temporary file removed
    assert checkpoints.missing(folder) == []  # rules 1 to 4 (no record here: no RNG file asked for)
