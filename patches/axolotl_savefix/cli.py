"""``axolotl-savefix plan CONFIG.yml``: the checkpoint plan before paying for the run.
``axolotl-savefix checkpoints OUTPUT_DIR [--json]``: what a run left in ``output_dir`` (see below).

* ``--steps-per-epoch N``: no Axolotl import, no data: the plan from the YAML
  and N optimizer steps per epoch (the run stops at ``max_steps`` or
  ``ceil(num_epochs * N)``); answers at once.
* otherwise: the config is loaded and the data set prepared by Axolotl itself
  (``load_cfg``, ``load_datasets``: packing, filtering and
  ``dataset_prepared_path`` count), the step count is Axolotl's, and one
  checkpoint's size is estimated from the model's shapes (built on the meta
  device: no weights are loaded).

Exit status: 0 when every requested checkpoint is saved and kept by this run,
1 when the run would lose one or its choice of ``save_total_limit`` cannot fit in the free
space of ``output_dir`` (peak and final model, ``DISK SHORT`` in the plan), 2 for a usage error or a config that the
patched run refuses (the message names the key, the value and the fix).

``checkpoints``: each ``checkpoint-N`` and set-aside ``incomplete-checkpoint-N`` folder with
its step, bytes, complete or what it lacks, which one a resume takes, and what the next resume
scan deletes or sets aside. Exit 1 when the newest ``checkpoint-N`` is incomplete (a save was
cut and no resume has dealt with it yet), 2 when ``OUTPUT_DIR`` is not a folder, else 0. What
an operator runs before requeueing a job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from . import checkpoints, checks, disk
from .plan import Plan, Settings, make_plan, render


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"axolotl-savefix plan: {path} is not a YAML mapping of config keys")
    return data


def plan_from_steps(raw: dict[str, Any], steps_per_epoch: int) -> Plan:
    settings = Settings.from_config(raw)
    max_steps = settings.max_steps or math.ceil(settings.num_epochs * steps_per_epoch)
    output_dir = raw.get("output_dir") or "./model-out"
    return make_plan(
        settings,
        steps_per_epoch * settings.grad_accum,
        max_steps,
        free_bytes=_available(output_dir),
    )


def _available(output_dir: str) -> int:
    """Free bytes of ``output_dir`` plus what its ``checkpoint-N`` folders use (a rerun reuses their room)."""
    return disk.free_bytes(output_dir) + sum(disk.dir_bytes(p) for p in checkpoints.checkpoints(output_dir))


def _lora_params(model: Any, cfg: Any) -> int:
    import torch

    targets = set(cfg.lora_target_modules or [])
    r = int(cfg.lora_r or 8)
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        if cfg.lora_target_linear or name.rsplit(".", 1)[-1] in targets:
            count += r * (module.in_features + module.out_features)
    return count


def estimate_bytes(cfg: Any) -> tuple[int, int]:
    """One checkpoint's bytes and the final model's (weights only) from the model's shapes (meta device) and the config."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(cfg.base_model_config or cfg.base_model, trust_remote_code=bool(cfg.trust_remote_code))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    adapter = cfg.adapter in ("lora", "qlora")
    trainable = _lora_params(model, cfg) if adapter else total
    dtype = getattr(cfg, "torch_dtype", None)
    dtype_bytes = getattr(dtype, "itemsize", 4) if dtype is not None else 4
    return disk.estimate_checkpoint_bytes(
        total, trainable, dtype_bytes, cfg.optimizer, adapter_only=adapter, save_only_model=bool(cfg.save_only_model)
    ), disk.estimate_checkpoint_bytes(total, trainable, dtype_bytes, cfg.optimizer, adapter_only=adapter, save_only_model=True)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Axolotl logs to stdout; the plan (and --json) must be the only thing there."""
    moved = []
    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
                moved.append(handler)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


def plan_from_data(path: Path, raw: dict[str, Any]) -> Plan:
    with _stdout_to_stderr():
        from axolotl.cli.config import load_cfg
        from axolotl.common.datasets import load_datasets

    with _stdout_to_stderr():  # again: importing Axolotl configured its handlers
        cfg = load_cfg(str(path))
        meta = load_datasets(cfg=cfg)
        checkpoint_bytes, final_bytes = estimate_bytes(cfg)
    settings = Settings.from_config(raw)  # the keys as the user wrote them, before Axolotl derives ratios
    world = int(cfg.world_size or 1)
    if cfg.sample_packing:  # Axolotl's own packed count: steps per epoch times accumulation
        batches = max(1, round(meta.total_num_steps * settings.grad_accum / settings.num_epochs))
    else:
        batches = math.ceil(math.ceil(len(meta.train_dataset) / cfg.micro_batch_size) / world)
    max_steps = cfg.max_steps or meta.total_num_steps
    return make_plan(
        settings,
        batches,
        max_steps,
        checkpoint_bytes=checkpoint_bytes,
        free_bytes=_available(cfg.output_dir),
        final_bytes=final_bytes,
    )


def inventory(output_dir: Path) -> dict[str, Any]:
    """Every ``checkpoint-N`` and set-aside folder of ``output_dir``: step, bytes, complete or what it lacks.

    Also which folder a resume takes (the newest complete ``checkpoint-N``) and what the next resume
    scan would delete or set aside (:func:`checkpoints.cleanup`). Sizes in bytes allocated on disk
    (:func:`disk.dir_bytes`, what the free space is compared with); ``free_bytes``: ``f_bavail``.
    """
    scanned = [(p, checkpoints.missing(p)) for p in checkpoints.checkpoints(output_dir)]
    aside = checkpoints.set_aside_folders(output_dir)
    sizes = {p: disk.dir_bytes(p) for p in [*(p for p, _ in scanned), *aside]}
    free = disk.free_bytes(output_dir)
    plan = checkpoints.cleanup(scanned, aside, sizes=sizes, free_bytes=free)
    folders = [
        {"name": p.name, "kind": "checkpoint", "step": checkpoints.step_of(p), "bytes": sizes[p], "complete": not lacks,
         "lacks": lacks, "resume": p == plan.newest}
        for p, lacks in scanned
    ]  # fmt: skip
    folders += [
        {"name": p.name, "kind": "set-aside", "step": (checkpoints.set_aside_step(p) or (0, 0))[0], "bytes": sizes[p],
         "complete": False, "lacks": ["set aside by a resume: never resumed from"], "resume": False}
        for p in aside
    ]  # fmt: skip
    folders.sort(key=lambda f: (f["step"], f["kind"] == "checkpoint"))
    newest_checkpoint = scanned[-1] if scanned else None
    return {
        "output_dir": str(output_dir),
        "free_bytes": free,
        "folders": folders,
        "resume_from": plan.newest.name if plan.newest else None,
        "newest_incomplete": bool(newest_checkpoint and newest_checkpoint[1]),
        "next_resume": {
            "delete": [{"name": p.name, "why": why} for p, why in plan.delete],
            "set_aside": plan.set_aside.name if plan.set_aside else None,
        },
    }


def render_inventory(report: dict[str, Any]) -> str:
    lines = [f"{report['output_dir']}: {report['free_bytes']} bytes free ({disk.human(report['free_bytes'])})"]
    if not report["folders"]:
        lines.append("  no checkpoint-N or set-aside folder")
    width = max([len(f["name"]) for f in report["folders"]] + [4])
    for f in report["folders"]:
        state = "complete" if f["complete"] else "incomplete: lacks " + "; ".join(f["lacks"])
        mark = "  <- a resume takes this one" if f["resume"] else ""
        lines.append(f"  {f['name']:<{width}}  step {f['step']:>6}  {f['bytes']:>12} bytes allocated  {state}{mark}")
    lines.append(f"  resume: from {report['resume_from']}" if report["resume_from"] else "  resume: none (no complete checkpoint)")
    nxt = report["next_resume"]
    for d in nxt["delete"]:
        lines.append(f"  next resume deletes {d['name']}: {d['why']}")
    if nxt["set_aside"]:
        lines.append(f"  next resume sets aside {nxt['set_aside']} as incomplete-{nxt['set_aside']}")
    if report["newest_incomplete"]:
        lines.append("  the newest checkpoint-N is incomplete: stock Axolotl's resume would fail on it (exit 1)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="axolotl-savefix", description="Exact checkpoints for Axolotl.")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_cmd = commands.add_parser("plan", help="print which steps a run saves, keeps and evaluates, stock and patched")
    plan_cmd.add_argument("config", type=Path, help="the Axolotl YAML config")
    plan_cmd.add_argument(
        "--steps-per-epoch", type=int, metavar="N", help="optimizer steps per epoch: skip Axolotl and the data set"
    )
    plan_cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
    folders_cmd = commands.add_parser(
        "checkpoints", help="list output_dir's checkpoints: step, bytes, complete or what each lacks, what a resume takes"
    )
    folders_cmd.add_argument("output_dir", type=Path, help="the run's output_dir")
    folders_cmd.add_argument("--json", action="store_true", help="print the list as JSON")
    args = parser.parse_args(argv)

    if args.command == "checkpoints":
        if not args.output_dir.is_dir():
            print(f"axolotl-savefix checkpoints: {args.output_dir} is not a folder: give the run's output_dir", file=sys.stderr)
            return 2
        report = inventory(args.output_dir)
        print(json.dumps(report) if args.json else render_inventory(report))
        return 1 if report["newest_incomplete"] else 0

    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch {args.steps_per_epoch}: give a positive number of optimizer steps per epoch")
    raw = _read_yaml(args.config)
    try:  # what the patched run refuses at config time, the plan refuses too (it has no patched column)
        checks.check_save_config(raw)
        checks.check_eval_config(raw)
        checks.check_best_model_alignment(raw)
    except checks.SaveFixConfigError as err:
        print(f"axolotl-savefix plan: {args.config}: {err}", file=sys.stderr)
        return 2
    if args.steps_per_epoch:
        result = plan_from_steps(raw, args.steps_per_epoch)
    else:
        result = plan_from_data(args.config, raw)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(render(result, str(args.config)))
    if result.disk_short:
        print(f"axolotl-savefix plan: {args.config}: this run will fill output_dir's disk (exit 1)", file=sys.stderr)
    return 1 if result.lost or result.disk_short else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
