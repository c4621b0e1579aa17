"""Run a case through real Axolotl: write the YAML, train, observe the saves.

Saved steps are read from Axolotl's own log line ("Saving model checkpoint to
.../checkpoint-N"), kept steps from the checkpoint folders left on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fixture
import yaml
from fixture import OFFLINE

# Transformers' own line; FSDP's sharded saves and TRL's trainers do not log it: tests/e2e/save_log.py logs the second
SAVE_LINE = re.compile(r"(?:Saving model checkpoint to|\[save_log\] saved checkpoint to) \S*checkpoint-(\d+)")


@dataclass
class Observed:
    saved: list[int]
    kept: list[int]
    max_steps: int
    log_history: list[dict]
    output_dir: Path
    best_model_checkpoint: str | None = None

    @property
    def evals(self) -> list[int]:
        """Steps that evaluated, from ``trainer_state.json``'s log history (step 0: ``eval_on_start``)."""
        return [e["step"] for e in self.log_history if "eval_loss" in e]

    def eval_loss(self, step: int) -> float:
        return next(e["eval_loss"] for e in self.log_history if "eval_loss" in e and e["step"] == step)

    def batches_per_epoch(self, grad_accum: int) -> int:
        """L, read back from Transformers' logged epoch at step 1: ``epoch = G / L`` (G < L)."""
        first = next(e for e in self.log_history if e.get("step") == 1 and "epoch" in e)
        return round(grad_accum / first["epoch"])


# FSDP2 keys that run on 2 CPU processes with tests/e2e/cpu_fsdp_shim.py (../shared/ENGINES.md):
# SHARDED_STATE_DICT (FULL_STATE_DICT's first save crashes on the CPU)
FSDP2 = {
    "fsdp_version": 2,
    "fsdp_config": {
        "offload_params": False,
        "cpu_ram_efficient_loading": False,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "state_dict_type": "SHARDED_STATE_DICT",
        "reshard_after_forward": True,
    },
}


def write_config(case: dict, workdir: Path, *, plugin: bool, device: str = "cpu") -> Path:
    """The YAML a user would write for ``case``; ``plugin`` adds the one line that enables the fix."""
    model_dir = fixture.build(workdir.parent / "fixture")
    data = fixture.write_dataset(workdir.parent / f"data-{case['samples']}.jsonl", case["samples"])
    out = workdir / "out"
    cfg = {
        "base_model": str(model_dir),
        "model_type": "LlamaForCausalLM",
        "tokenizer_type": "AutoTokenizer",
        "datasets": [{"path": str(data), "ds_type": "json", "type": "completion"}],
        "dataset_prepared_path": str(workdir.parent / "prepared"),
        "val_set_size": case["val_set_size"],
        "dataset_num_proc": 1,
        "sequence_len": 64,
        "sample_packing": case["sample_packing"],
        "micro_batch_size": case["micro_batch"],
        "gradient_accumulation_steps": case["grad_accum"],
        "num_epochs": case["num_epochs"],
        "saves_per_epoch": case["saves_per_epoch"],
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "learning_rate": 0.001,
        "output_dir": str(out),
        "logging_steps": 1,
        "seed": 42,
        "bf16": device == "cuda-bf16",
        "fp16": False,
        "tf32": False,
        "flash_attention": False,
        "sdp_attention": False,
    }
    if case["saves_per_epoch"] is None:  # unset: Axolotl's default save_strategy (epoch)
        del cfg["saves_per_epoch"]
    for key in ("max_steps", "save_total_limit", "evals_per_epoch", "early_stopping_patience", "load_best_model_at_end"):
        if case[key] is not None:
            cfg[key] = case[key]
    if case["sample_packing"]:
        cfg["pad_to_sequence_len"] = True
    if case["early_stopping_patience"]:
        cfg["metric_for_best_model"] = "eval_loss"
    if case["adapter"]:
        cfg.update(
            adapter=case["adapter"],
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            lora_target_modules=["q_proj", "v_proj"],
        )
    if plugin:
        cfg["plugins"] = ["axolotl_savefix.SaveFixPlugin"]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def observe(output_dir: Path, log_text: str) -> Observed:
    save_log = output_dir / "save_log.txt"  # tests/e2e/save_log.py, where Transformers logs no save line
    if save_log.exists():
        log_text += "\n" + save_log.read_text()
    saved = [int(m) for m in SAVE_LINE.findall(log_text)]
    kept = sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))
    state = json.loads((output_dir / f"checkpoint-{kept[-1]}" / "trainer_state.json").read_text()) if kept else {}
    return Observed(
        saved,
        kept,
        state.get("max_steps", 0),
        state.get("log_history", []),
        output_dir,
        state.get("best_model_checkpoint"),
    )


def record(test: str, observed: Observed, **expected: list[int]) -> None:
    """Append what a run did, and what the reference expects, to $SAVEFIX_COMPAT_REPORT (JSON lines).

    `nox -s compat` reads it for docs/compat-sweep.json; called before the asserts, so a
    failing run is reported with what it did.
    """
    path = os.environ.get("SAVEFIX_COMPAT_REPORT")
    if not path:
        return
    line = {"test": test, "saved": observed.saved, "kept": observed.kept, "evals": observed.evals, "expected": expected}
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _capture_axolotl_log():
    handler = _Capture()
    logger = logging.getLogger("axolotl")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def run_in_process(config_path: Path) -> Observed:
    """Train in this interpreter (Axolotl imported once for the whole matrix)."""
    os.environ.update(OFFLINE)
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import train

    cfg = load_cfg(str(config_path))
    with _capture_axolotl_log() as log:
        train(cfg=cfg, dataset_meta=load_datasets(cfg=cfg))
    return observe(Path(cfg.output_dir), "\n".join(log.lines))


def cli_env(env: dict | None = None) -> dict:
    """This process's environment for an ``axolotl`` command: offline, this venv's bin first on PATH, then ``env``."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, **OFFLINE, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **(env or {})}


def run_cli_raw(
    config_path: Path,
    *extra: str,
    launcher: list[str] | None = None,
    env: dict | None = None,
    log_name: str = "train.log",
    forked: bool | None = None,
) -> tuple[int, str]:
    """``axolotl train CONFIG`` in a process of its own; its exit status and log (also written next to the config).

    ``forked`` (default: when there is no ``launcher`` and no ``extra`` argument, unless
    ``SAVEFIX_HARNESS_FORK=0``): the process is a child forked from the harness' fork server,
    which imported Axolotl once (tests/e2e/zygote.py), running ``python -m axolotl.cli.train
    CONFIG``; else the real ``axolotl train`` entry point (or ``launcher``) is spawned.
    """
    bindir = str(Path(sys.executable).parent)
    base_env = cli_env()
    full_env = {**base_env, **(env or {})}
    if forked is None:
        forked = launcher is None and not extra and os.environ.get("SAVEFIX_HARNESS_FORK", "1") != "0"
    log_path = config_path.parent / log_name
    if forked:
        import zygote

        sys_path = [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        argv = ["axolotl.cli.train", str(config_path)]
        code = zygote.zygote().run(argv, base_env, full_env, log_path, 900, sys_path)
        return code, log_path.read_text(errors="replace")
    cmd = launcher or [str(Path(bindir) / "axolotl"), "train", str(config_path), *extra]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    log_path.write_text(log)
    return proc.returncode, log


def du_bytes(folder: Path) -> int:
    """What ``du`` (GNU coreutils, an independent count) says ``folder`` has allocated on disk, in bytes."""
    done = subprocess.run(["du", "-s", "--block-size=1", str(folder)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def variant(config_path: Path, name: str, **changes) -> Path:
    """The same run's config in a sibling folder ``name`` with ``changes``: the same ``output_dir`` unless changed."""
    cfg = yaml.safe_load(config_path.read_text())
    cfg.update(changes)
    folder = config_path.parent.parent / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def output_dir(config_path: Path) -> Path:
    return Path(yaml.safe_load(config_path.read_text())["output_dir"])


def run_cli(
    config_path: Path, *extra: str, launcher: list[str] | None = None, env: dict | None = None, forked: bool | None = None
) -> Observed:
    """``axolotl train CONFIG`` in a process of its own (``forked``: see :func:`run_cli_raw`)."""
    code, log = run_cli_raw(config_path, *extra, launcher=launcher, env=env, forked=forked)
    if code != 0:
        raise AssertionError(f"axolotl train {config_path} failed ({code}):\n{log[-4000:]}")
    return observe(output_dir(config_path), log)


def resume_from_copy(config_path: Path, first_output: Path, step: int) -> Path:
    """Make ``config_path``'s run resume from a copy of ``first_output/checkpoint-step`` in its own output dir.

    As if a run had died right after that (mid-epoch) checkpoint: the copy is the only one there.
    """
    cfg = yaml.safe_load(config_path.read_text())
    checkpoint = Path(cfg["output_dir"]) / f"checkpoint-{step}"
    shutil.copytree(first_output / f"checkpoint-{step}", checkpoint)
    assert 0 < json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] < 1, "not a mid-epoch checkpoint"
    cfg["resume_from_checkpoint"] = str(checkpoint)
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return checkpoint


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (several test sessions may share this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config_path: Path, world: int, *extra: str) -> list[str]:
    """``torchrun --nproc_per_node WORLD -m axolotl.cli.train CONFIG`` on a free port (not torchrun's fixed 29500)."""
    launcher = Path(sys.executable).parent / "torchrun"
    return [
        str(launcher), "--nproc_per_node", str(world), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        *extra, "-m", "axolotl.cli.train", str(config_path),
    ]  # fmt: skip
