"""The layout corpus (issue 37, item 4): every checkpoint layout a real Axolotl run writes on this machine.

Each :class:`Spec` is a real, tiny patched Axolotl run (the plugin line on; test shims for the CPU
engines): 1 epoch, 6 optimizer steps (per rank), ``saves_per_epoch: 3``, so every run saves three
checkpoints, at the steps tests/reference.py gives (2, 4, 6). :func:`build` runs it once and reads back
what it wrote: each ``checkpoint-N``'s files and the order the save wrote them in (their mtimes, in ns;
ties broken by name; the pending and commit records are this package's and not part of the order).
:func:`cut` makes the folder a save cut at one file of that order leaves, from a copy of the real folder;
:func:`resume` runs the same config again (patched, or stock: the plugin line removed) on a copy of the
output_dir holding the checkpoints up to the one before the last, as a run killed there leaves it.

Nothing here judges: the tests (tests/e2e/test_layouts.py) compare the package's verdicts with what the
runs wrote and what a real resume does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cases
import fixture
import harness
import reference
import yaml

HERE = Path(__file__).parent
PLUGIN = "axolotl_savefix.SaveFixPlugin"
RANK_SAMPLES = 12  # per rank; micro batch 2: 6 batches per epoch per rank
SAVES_PER_EPOCH = 3
MARKER, PENDING = "savefix_commit.json", "savefix_pending.json"  # the package's records (checkpoints.MARKER, PENDING)
OWN_RECORDS = "savefix_"

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": ["q_proj", "v_proj"]}
FSDP_SHIMS = ("cpu_fsdp_shim.CpuFsdpShim",)
DDP_SHIMS = ("cpu_ddp_shim.CpuDdpShim",)
DS_SHIMS = ("cpu_deepspeed_shim.CpuDeepSpeedShim",)
RELORA_EVERY = 3  # jagged_restart_steps: a restart at step 3, between the saves at 2 and 4


@dataclass(frozen=True)
class Spec:
    """One layout: the config keys a user writes for it, and how the run is launched here."""

    name: str
    keys: dict = field(default_factory=dict)
    world: int = 1
    shims: tuple[str, ...] = ()
    data: str = "completion"  # or "dpo", "kto"
    release: str = "0.19.0"  # the Axolotl release whose environment runs it (SAVEFIX_LAYOUTS_PYTHON_<release>)
    deepspeed: str | None = None  # zero2 / zero3: Axolotl's deepspeed_configs/<name>.json
    env: dict = field(default_factory=dict)
    note: str = ""

    @property
    def samples(self) -> int:
        return RANK_SAMPLES * self.world


SPECS = [
    Spec("full", note="full fine-tune, safetensors"),
    # Transformers 5 always writes safetensors (Axolotl 0.14+ refuses save_safetensors: false): Axolotl 0.13.2 writes .bin
    Spec(
        "full_bin", {"save_safetensors": False}, release="0.13.2", note="save_safetensors: false (Axolotl 0.13.2, Transformers 4)"
    ),
    Spec("lora", LORA, note="LoRA adapter"),
    Spec("save_only_model", {"save_only_model": True}, note="save_only_model: true"),
    Spec(
        "optimizer_fallback", shims=("no_optimizer_shim.NoOptimizerShim",), note="Axolotl's fallback: no optimizer.pt/scheduler.pt"
    ),
    Spec("dpo", {"rl": "dpo", "remove_unused_columns": False}, data="dpo", note="TRL DPOTrainer"),
    Spec("kto", {"rl": "kto", "remove_unused_columns": False}, data="kto", note="TRL KTOTrainer"),
    Spec("relora", {**LORA, "relora": True, "jagged_restart_steps": RELORA_EVERY}, note="ReLoRA (restart folders)"),
    Spec("ddp", world=2, shims=DDP_SHIMS, env={"ACCELERATE_USE_CPU": "true"}, note="2-process DDP"),
    Spec(
        "fsdp2_sharded",
        dict(harness.FSDP2),
        world=2,
        shims=FSDP_SHIMS,
        env={"ACCELERATE_USE_CPU": "true"},
        note="FSDP2, SHARDED_STATE_DICT",
    ),
    Spec(
        "fsdp2_full",
        {**harness.FSDP2, "fsdp_config": {**harness.FSDP2["fsdp_config"], "state_dict_type": "FULL_STATE_DICT"}},
        world=2,
        shims=FSDP_SHIMS,
        env={"ACCELERATE_USE_CPU": "true"},
        note="FSDP2, FULL_STATE_DICT",
    ),  # fmt: skip
    Spec(
        "fsdp2_lora", {**harness.FSDP2, **LORA}, world=2, shims=FSDP_SHIMS, env={"ACCELERATE_USE_CPU": "true"}, note="FSDP2 + LoRA"
    ),
    Spec("zero2", world=2, shims=DS_SHIMS, deepspeed="zero2", note="DeepSpeed ZeRO-2"),
    Spec("zero3", world=2, shims=DS_SHIMS, deepspeed="zero3", note="DeepSpeed ZeRO-3"),
    Spec("zero2_lora", LORA, world=2, shims=DS_SHIMS, deepspeed="zero2", note="DeepSpeed ZeRO-2 + LoRA"),
    Spec("zero3_lora", LORA, world=2, shims=DS_SHIMS, deepspeed="zero3", note="DeepSpeed ZeRO-3 + LoRA"),
]
BY_NAME = {s.name: s for s in SPECS}
DEEPSPEED = [s.name for s in SPECS if s.deepspeed]


def expected_saves(spec: Spec) -> list[int]:
    """The steps the patched run saves (tests/reference.py): L batches per epoch per rank, 1 epoch."""
    case = _case(spec)
    L = case["samples"] // (case["micro_batch"] * spec.world)
    M = reference.axolotl_max_steps(case["samples"], case["micro_batch"], case["grad_accum"], case["num_epochs"], spec.world)
    return reference.patched_saves(L, case["grad_accum"], case["saves_per_epoch"], M)


def restart_steps(spec: Spec) -> list[int]:
    """ReLoRA's restart folders: ``checkpoint-G/{adapter,relora}`` at each ``on_step_begin`` whose step G is a multiple."""
    if not spec.keys.get("relora"):
        return []
    last = expected_saves(spec)[-1]
    return [g for g in range(1, last) if g % spec.keys["jagged_restart_steps"] == 0]


def _case(spec: Spec) -> dict:
    return {**cases.case("reported"), "samples": spec.samples, "num_epochs": 1, "saves_per_epoch": SAVES_PER_EPOCH}


def python_for(spec: Spec) -> str | None:
    """The interpreter of the environment that runs ``spec``: this one, or another release's (None: not given)."""
    if spec.release == "0.19.0":
        return sys.executable
    return os.environ.get(f"SAVEFIX_LAYOUTS_PYTHON_{spec.release.replace('.', '_')}")


def deepspeed_configs() -> Path | None:
    folder = os.environ.get("SAVEFIX_DEEPSPEED_CONFIGS")
    return Path(folder) if folder else None


def write_config(spec: Spec, workdir: Path, *, plugin: bool = True) -> Path:
    """The YAML a user writes for ``spec`` (the plugin line with ``plugin``), plus the test shims and loggers."""
    case = _case(spec)
    if python_for(spec) != sys.executable:  # the tiny model and tokenizer saved by that release's Transformers
        _build_fixture(python_for(spec), workdir.parent / "fixture")
    config = harness.write_config(case, workdir, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    root = workdir.parent
    if spec.data == "dpo":
        data = fixture.write_preference_dataset(root / f"dpo-{spec.samples}.jsonl", spec.samples)
        cfg["datasets"] = [{"path": str(data), "ds_type": "json", "type": "chatml", "split": "train"}]
    elif spec.data == "kto":
        data = fixture.write_kto_dataset(root / f"kto-{spec.samples}.jsonl", spec.samples)
        cfg["datasets"] = [{"path": str(data), "ds_type": "json", "type": "chatml.ultra", "split": "train"}]
    cfg["dataset_prepared_path"] = str(root / f"prepared-{spec.name}")
    cfg.update(spec.keys)
    cfg["auto_resume_from_checkpoints"] = True
    if spec.deepspeed:
        configs = deepspeed_configs()
        if configs is None:
            raise RuntimeError("SAVEFIX_DEEPSPEED_CONFIGS is unset (nox -s deepspeed sets it)")
        cfg["deepspeed"] = str(configs / f"{spec.deepspeed}.json")
    cfg["plugins"] = [*spec.shims, "save_log.SaveLog", "step_log.StepLog", *([PLUGIN] if plugin else [])]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def _build_fixture(python: str | None, folder: Path) -> None:
    """tests/fixture.py's model and tokenizer, built by ``python`` (Transformers 4 cannot read what Transformers 5 writes)."""
    import subprocess

    code = "import sys, pathlib; sys.path.insert(0, sys.argv[1]); import fixture; fixture.build(pathlib.Path(sys.argv[2]))"
    subprocess.run(
        [python or sys.executable, "-c", code, str(HERE.parent), str(folder)],
        check=True,
        env=harness.cli_env(),
        capture_output=True,
    )


def workdir_root(spec: Spec, root: Path) -> Path:
    """Where ``spec``'s runs go: ``root``, or a folder per release (its own fixture, its own prepared data)."""
    return root if spec.release == "0.19.0" else root / f"axolotl-{spec.release}"


def _env(spec: Spec) -> dict:
    env = {"PYTHONPATH": str(HERE), **spec.env}
    if spec.deepspeed:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator (gloo); ACCELERATE_USE_CPU stays unset
    return env


def run(spec: Spec, config: Path, log_name: str) -> tuple[int, str]:
    """Train ``config`` as ``spec`` is launched: forked from the harness' server, another release's python, or torchrun."""
    python = python_for(spec)
    if python is None:
        raise RuntimeError(
            f"no environment for Axolotl {spec.release}: set SAVEFIX_LAYOUTS_PYTHON_{spec.release.replace('.', '_')}"
        )
    if spec.world > 1:
        launcher = harness.torchrun(config, spec.world)
        launcher[0] = str(Path(python).parent / "torchrun")
    elif python != sys.executable:
        launcher = [python, "-m", "axolotl.cli.train", str(config)]
    else:
        launcher = None
    return harness.run_cli_raw(config, launcher=launcher, env=_env(spec), log_name=log_name)


# --- what a run wrote ------------------------------------------------------------------------------------------------


def files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative ``/`` path) and its mtime in ns, this package's own records left out."""
    found = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not (("/" not in rel) and rel.lstrip(".").startswith(OWN_RECORDS)):
            found[rel] = path.stat().st_mtime_ns
    return found


def save_order(folder: Path) -> list[str]:
    """The files of a checkpoint in the order its save wrote them: by mtime (ns), then by name."""
    stamped = files(folder)
    return sorted(stamped, key=lambda rel: (stamped[rel], rel))


@dataclass
class Built:
    spec: Spec
    config: Path
    output_dir: Path
    code: int
    log: str
    saved: list[int]  # from the save lines (Transformers' or save_log.py's)
    orders: dict[int, list[str]]  # step -> the save order of checkpoint-step (as written, before any copy)

    def folder(self, step: int) -> Path:
        return self.output_dir / f"checkpoint-{step}"


def build(spec: Spec, root: Path) -> Built:
    """Run ``spec`` once, patched, in ``root/<name>``; read back its checkpoints."""
    config = write_config(spec, workdir_root(spec, root) / spec.name)
    code, _ = run(spec, config, "build.log")
    (config.parent / "build.code").write_text(str(code))
    return load(spec, root)


def load(spec: Spec, root: Path) -> Built | None:
    """What :func:`build` made under ``root`` (None: not built there): the run's exit status, log and checkpoints."""
    config = workdir_root(spec, root) / spec.name / "config.yml"
    status = config.parent / "build.code"
    if not status.exists():
        return None
    out = harness.output_dir(config)
    orders = {int(p.name.split("-")[1]): save_order(p) for p in out.glob("checkpoint-*") if p.is_dir()}
    log = (config.parent / "build.log").read_text(errors="replace")
    return Built(spec, config, out, int(status.read_text()), log, saves(out), orders)


def saves(out: Path) -> list[int]:
    """The steps saved, from tests/e2e/save_log.py's file (one line per save on rank 0, every trainer and engine)."""
    path = out / "save_log.txt"
    return [int(m) for m in harness.SAVE_LINE.findall(path.read_text())] if path.exists() else []


# --- cuts made from a copy of a real folder --------------------------------------------------------------------------


def write_pending(folder: Path, step: int, fresh: bool = True) -> None:
    """The pending-save record a save of this package begins with (``fresh``: it made the folder), as the package writes it."""
    from axolotl_savefix.rules import checkpoints

    checkpoints.write_pending(folder, step, fresh, "layouts-test")


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def cut(source: Path, target: Path, order: list[str], k: int, how: str, *, pending: bool | None = True) -> Path:
    """A copy of ``source`` as a save cut at file ``k`` of ``order`` leaves it.

    Files before ``k`` whole, file ``k`` truncated to half (``how="half"``) or absent (``"missing"``), files
    after it absent, no commit marker; ``pending``: the pending-save record the real save began with
    (``fresh`` True), False for one not fresh, None for none (a stock save's cut).
    ``k == len(order)``: every file there, only the marker missing.
    """
    copy_checkpoint(source, target)
    for rel in order[k + 1 :]:
        (target / rel).unlink()
    if k < len(order):
        path = target / order[k]
        if how == "half":
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size // 2)
        else:
            path.unlink()
    for own in [p for p in target.iterdir() if p.name.lstrip(".").startswith(OWN_RECORDS)]:
        own.unlink()
    _drop_empty_dirs(target)
    step = int(source.name.split("-")[1])
    if pending is not None:
        write_pending(target, step, pending)
    return target


def damaged(source: Path, target: Path, rel: str, how: str) -> Path:
    """A copy of the committed ``source`` (marker kept) with one file deleted or truncated to half."""
    copy_checkpoint(source, target)
    path = target / rel
    if how == "half":
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        path.unlink()
    return target


def _drop_empty_dirs(folder: Path) -> None:
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()


# --- a resume from a copy ----------------------------------------------------------------------------------------------


@dataclass
class Resumed:
    variant: str
    code: int
    log: str
    output_dir: Path
    resumed_from: int | None  # the step of "resume from checkpoint at .../checkpoint-N"
    first_step: int | None  # the first step the resumed run trained (step_log.py)


def again(built: Built, workdir: Path, *, plugin: bool, extra: dict | None = None) -> Path:
    """The run's own config (its model, data and keys) in ``workdir``, output_dir ``workdir/out``; the plugin line or not."""
    cfg = yaml.safe_load(built.config.read_text())
    cfg["output_dir"] = str(workdir / "out")
    if not plugin:
        cfg["plugins"] = [p for p in cfg["plugins"] if p != PLUGIN]
    cfg.update(extra or {})
    config = workdir / "config.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def resume(built: Built, root: Path, step: int, *, plugin: bool, extra: dict | None = None, name: str = "") -> Resumed:
    """The run's config again (``plugin``: with the plugin line, else without), on a copy of its output_dir holding the
    checkpoint-N folders up to ``step``, as a run killed after that save leaves it: an auto-resume."""
    variant = name or ("patched" if plugin else "stock")
    workdir = workdir_root(built.spec, root) / f"{built.spec.name}-resume-{variant}"
    out = workdir / "out"
    out.mkdir(parents=True)
    for folder in sorted(built.output_dir.glob("checkpoint-*")):
        if folder.is_dir() and int(folder.name.split("-")[1]) <= step:
            copy_checkpoint(folder, out / folder.name)
    config = again(built, workdir, plugin=plugin, extra=extra)
    code, log = run(built.spec, config, "resume.log")
    return Resumed(variant, code, log, out, resumed_from(log, out), first_trained_step(out))


def resumed_from(log: str, out: Path) -> int | None:
    marker = f"resume from checkpoint at {out}/checkpoint-"
    at = log.find(marker)
    if at < 0:
        return None
    digits = ""
    for ch in log[at + len(marker) :]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def first_trained_step(out: Path) -> int | None:
    """The first ``[step_log] step N`` after the last train begin in ``out/step_log.txt`` (None: no step trained)."""
    path = out / "step_log.txt"
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    begins = [n for n, line in enumerate(lines) if line.startswith("[step_log] begin")]
    for line in lines[(begins[-1] + 1) if begins else 0 :]:
        if line.startswith("[step_log] step "):
            return int(line.split()[2])
    return None


def checkpoint_json(out: Path) -> dict:
    """``python -m axolotl_savefix checkpoints OUT --json``, in a process of its own."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "axolotl_savefix", "checkpoints", str(out), "--json"],
        capture_output=True, text=True, env=harness.cli_env(), timeout=300,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise AssertionError(f"axolotl-savefix checkpoints {out} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)
