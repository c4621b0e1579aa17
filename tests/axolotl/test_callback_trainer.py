"""The save decision driven by a real transformers.Trainer on a tiny model (no Axolotl code runs)."""

import json
import shutil

import fixture
import pytest
import reference
import torch
from transformers import AutoTokenizer, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from axolotl_savefix.seams.saves_per_epoch import NEVER, SavesPerEpochCallback


class Rows(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        ids = torch.tensor([1] + [4 + (i * 7 + j) % 100 for j in range(11)])
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fixture.build(tmp_path_factory.mktemp("fixture"))


def tiny_trainer(model_dir, args, callbacks, *, samples, evals=0):
    """A Trainer on the fixture's tiny Llama: ``samples`` training rows, ``evals`` validation rows (none: 0)."""
    return Trainer(
        model=LlamaForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=Rows(samples),
        eval_dataset=Rows(evals) if evals else None,
        callbacks=callbacks,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )


def _train(model_dir, out, *, samples, micro, accum, k, epochs, resume=None, limit=None):
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        num_train_epochs=epochs,
        save_strategy="steps",
        save_steps=NEVER,
        save_total_limit=limit,
        learning_rate=1e-3,
        report_to=[],
        logging_steps=1,
        use_cpu=True,
        seed=0,
        dataloader_drop_last=False,
    )
    trainer = tiny_trainer(model_dir, args, [SavesPerEpochCallback(k)], samples=samples)
    saved = []

    class Record(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            saved.append(state.global_step)

    trainer.add_callback(Record())
    trainer.train(resume_from_checkpoint=resume)
    return saved, trainer.state.max_steps


@pytest.mark.parametrize(
    ("samples", "micro", "accum", "k", "epochs"),
    [
        (30, 2, 1, 4, 2),  # L = 15, not divisible by 4
        (50, 2, 3, 4, 2),  # L = 25, G = 3: the last step of each epoch takes 1 batch
        (24, 2, 1, 3, 1),  # L = 12, divisible: the naive equality rule would work here too
        (12, 2, 2, 5, 1),  # k > S (S = 3): every step saves
    ],
)
def test_trainer_saves_exactly_at_the_targets(model_dir, tmp_path, samples, micro, accum, k, epochs):
    saved, max_steps = _train(model_dir, tmp_path, samples=samples, micro=micro, accum=accum, k=k, epochs=epochs)
    L = -(-samples // micro)
    assert saved == reference.patched_saves(L, accum, k, max_steps)
    dirs = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert dirs == saved


def test_resume_mid_epoch_saves_nothing_twice_and_skips_nothing(model_dir, tmp_path):
    full, max_steps = _train(model_dir, tmp_path / "full", samples=30, micro=2, accum=1, k=4, epochs=2)
    expected = reference.patched_saves(15, 1, 4, max_steps)
    assert full == expected
    stop = expected[1]  # a checkpoint in the middle of epoch 1
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / f"checkpoint-{stop}", run / f"checkpoint-{stop}")
    state = json.loads((run / f"checkpoint-{stop}" / "trainer_state.json").read_text())
    assert 0 < state["epoch"] < 1
    saved, _ = _train(model_dir, run, samples=30, micro=2, accum=1, k=4, epochs=2, resume=str(run / f"checkpoint-{stop}"))
    assert saved == [s for s in expected if s > stop]


@pytest.mark.parametrize("seam", ["saves per epoch", "evals per epoch"])
def test_axolotls_gc_collects_before_each_per_epoch_save_and_eval_as_before_stocks(model_dir, tmp_path, monkeypatch, seam):
    """With ``gc_collect_steps``, Axolotl's GCCallback collects garbage before each save and eval of stock's schedule.

    It reads ``control.should_evaluate`` at on_step_end, set in stock by Transformers' DefaultFlowCallback before
    Axolotl's callbacks run: the per-epoch eval callback comes before them too. For saves it reads Transformers'
    interval, which a per-epoch run never reaches: the per-epoch save callback collects itself. (Found by the
    upstream review of PR #1.)
    """
    import gc

    from axolotl.utils.callbacks import GCCallback
    from axolotl.utils.dict import DictDefault

    from axolotl_savefix._infra import hooks
    from axolotl_savefix.seams import evals_per_epoch, saves_per_epoch

    seam_module = saves_per_epoch if seam == "saves per epoch" else evals_per_epoch
    monkeypatch.setattr(hooks._registry, "callbacks", {seam: ("test", seam_module._callbacks)})
    builder = type("Builder", (), {})()
    builder.cfg = DictDefault({"saves_per_epoch": 4, "evals_per_epoch": 4, "gc_collect_steps": 1000})
    builder.eval_dataset = Rows(4)
    at = {"step": None}
    collected, done = [], []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: (at["step"] is not None and collected.append(at["step"]), collect(*a))[1])

    class StepEnd(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kw):
            at["step"] = state.global_step if self.step else None

    class Done(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            done.append(state.global_step)

        def on_evaluate(self, args, state, control, **kw):
            done.append(state.global_step)

    axolotls = [GCCallback(1000), StepEnd(False)]  # what get_callbacks returns (gc_collect_steps; gc_steps before 0.14)
    callbacks = [StepEnd(True), *hooks._with_callbacks(lambda builder: axolotls, builder), Done()]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_train_epochs=2,
        save_strategy="steps" if seam == "saves per epoch" else "no",
        save_steps=NEVER,
        eval_strategy="steps" if seam == "evals per epoch" else "no",
        eval_steps=NEVER,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = tiny_trainer(model_dir, args, callbacks, samples=30, evals=4)
    trainer.train()
    assert done == reference.patched_saves(15, 1, 4, trainer.state.max_steps)  # 4 per epoch, the last step included
    assert set(done) <= set(collected), (done, collected)
