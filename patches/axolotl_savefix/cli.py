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

Every command (``plan``, ``checkpoints``, ``--version``) keeps its own process off the network
before anything imports Axolotl (:func:`quiet_network`): Axolotl's telemetry is always off
(its exit-time flush waits on the network with no bound), and the Hugging Face libraries are
offline unless ``HF_HUB_OFFLINE`` is set (their requests time out, so an explicit ``0`` can
wait, never hang). Run as a command, the process exits at most :data:`EXIT_GRACE_S` seconds
after the plan is written, whatever a library's exit handler waits on.

A mistake in the input (a missing, unreadable or empty file, a directory, YAML that does not
parse or is not a mapping, a config Axolotl's schema refuses, a closed stdout) is one line on
stderr and exit 2; ``--debug`` shows the traceback instead. Axolotl's own output (its config
dump, warnings, progress bars) is kept off the terminal unless ``--verbose`` (then on stderr):
stdout carries only the plan.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from . import checkpoints, checks, disk
from ._targets import axolotl_version, savefix_version
from .plan import Plan, Settings, make_plan, render

# Axolotl 0.13.2 to 0.21.0 read AXOLOTL_DO_NOT_TRACK (0.17+ also DO_NOT_TRACK, 0.13-0.16 only
# when AXOLOTL_DO_NOT_TRACK is one of 0/1/true/false); posthog's host is a constant there, not a setting.
TELEMETRY_OFF = {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1"}
# huggingface_hub, transformers and datasets: no lookup at all (a local cache still works)
HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
EXIT_GRACE_S = 10.0  # a command exits this long after its output at the latest


class InputError(Exception):
    """A mistake in what the user gave: one line on stderr, exit 2."""


def quiet_network(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set, in ``environ`` (default ``os.environ``), what keeps this process off the network; returns what was set.

    Telemetry is always off (:data:`TELEMETRY_OFF`, even over a user's ``AXOLOTL_DO_NOT_TRACK=0``):
    Axolotl sends it from an exit handler whose flush (posthog's ``queue.join``) has no time bound,
    so on a firewalled cluster the command would hang after its answer. The Hub is offline
    (:data:`HUB_OFFLINE`) unless the user set ``HF_HUB_OFFLINE`` to anything: its requests have
    timeouts, so an explicit ``HF_HUB_OFFLINE=0`` (download what the plan needs) is bounded.
    Must run before Axolotl is imported; affects this process (and its children) only.
    """
    env = os.environ if environ is None else environ
    chosen = dict(TELEMETRY_OFF)
    if "HF_HUB_OFFLINE" not in env:
        chosen.update({k: v for k, v in HUB_OFFLINE.items() if k not in env})
    env.update(chosen)
    return chosen


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _config_file(path: Path) -> Path:
    """The YAML file ``path`` names; a folder with one ``*.yml``/``*.yaml`` is that file, as in Axolotl's ``load_cfg``."""
    text = str(path)
    if text.startswith(("http:/", "https:/")):  # Path("https://x") reads "https:/x"
        raise InputError(f"{text} is a URL: plan reads a local file and never waits on the network; download it first")
    if path.is_dir():
        found = sorted([*path.glob("*.yml"), *path.glob("*.yaml")])
        if len(found) == 1:
            return found[0]  # what Axolotl's load_cfg (choose_config) takes
        if not found:
            raise InputError(f"{path} is a folder with no .yml or .yaml file in it: give the Axolotl config file")
        names = ", ".join(p.name for p in found)
        raise InputError(f"{path} is a folder with {len(found)} YAML files ({names}): give the one to plan")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    """The config file's keys; :class:`InputError` (one line naming the file) for anything that is not a YAML mapping."""
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder: give the Axolotl config file") from None
    except PermissionError:
        raise InputError(f"{path}: cannot read it (permission denied)") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{path}{where}: not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {_first_line(str(err))}") from None
    if data is None:
        raise InputError(f"{path} is empty: an Axolotl config is a YAML mapping of keys (base_model, datasets, ...)")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the {type(data).__name__} {data!r:.40}"
        raise InputError(f"{path} holds {kind}, not a YAML mapping of config keys (base_model, datasets, ...)")
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


class TokenizerNeeded(Exception):
    """Axolotl's data preparation read more of the tokenizer than its name: load the real one."""


class _NameOnlyTokenizer:
    """What Axolotl's data preparation reads of the tokenizer when the prepared set is on disk: its name.

    ``name_or_path`` goes into the prepared set's hash; any other attribute raises
    :class:`TokenizerNeeded` (not an AttributeError, so ``hasattr`` cannot swallow it).
    """

    def __init__(self, name: str) -> None:
        self.name_or_path = name

    def __getattr__(self, attr: str) -> Any:
        raise TokenizerNeeded(attr)


def prepared_on_disk(cfg: Any) -> bool:
    """Whether Axolotl's prepared data set for ``cfg`` is in ``dataset_prepared_path`` (then no tokenizer is needed)."""
    if any(cfg.get(k) for k in ("added_tokens_overrides", "tokenizer_use_mistral_common", "processor_type", "streaming",
                                "pretraining_dataset", "push_dataset_to_hub", "skip_prepare_dataset", "rl")):  # fmt: skip
        return False
    try:
        from axolotl.utils.data.shared import generate_dataset_hash_from_config, get_prepared_dataset_path
    except ImportError:
        return False
    for datasets in (cfg.datasets, cfg.test_datasets):
        if datasets:
            folder = get_prepared_dataset_path(cfg, generate_dataset_hash_from_config(cfg, datasets, cfg.tokenizer_config))
            if not any(Path(folder).glob("*")):
                return False
    return True


def _datasets(cfg: Any) -> Any:
    """Axolotl's ``load_datasets``; without the tokenizer when the prepared set is on disk."""
    if prepared_on_disk(cfg):
        from axolotl.utils.data import prepare_datasets

        try:
            train, _, total, _ = prepare_datasets(cfg, _NameOnlyTokenizer(cfg.tokenizer_config))
            return SimpleNamespace(train_dataset=train, total_num_steps=total)
        except TokenizerNeeded:
            pass
    from axolotl.common.datasets import load_datasets

    return load_datasets(cfg=cfg)


def plan_from_data(path: Path, raw: dict[str, Any]) -> Plan:
    """The plan with Axolotl's own step count: ``load_cfg``, then the data (the prepared set if on disk)."""
    with _stdout_to_stderr():
        from axolotl.cli.config import load_cfg

    with _stdout_to_stderr():  # again: importing Axolotl configured its handlers
        cfg = load_cfg(str(path))
        meta = _datasets(cfg)
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

    Also which folder a resume takes (the newest complete ``checkpoint-N``) and what the next
    auto-resume would set aside, delete (provably this package's own cut saves only) and leave
    (:func:`checkpoints.cleanup`). Nothing is changed here. Sizes in bytes allocated on disk
    (:func:`disk.dir_bytes`, what the free space is compared with); ``free_bytes``: ``f_bavail``.
    """
    judged = [(p, checkpoints.judge(p)) for p in checkpoints.checkpoints(output_dir)]
    scanned = [(p, list(j.lacks), bool(j.lacks) and checkpoints.own_cut(p)) for p, j in judged]
    aside = [(p, checkpoints.own_cut(p)) for p in checkpoints.set_aside_folders(output_dir)]
    sizes = {p: disk.dir_bytes(p) for p in [*(p for p, _ in judged), *(p for p, _ in aside)]}
    free = disk.free_bytes(output_dir)
    plan = checkpoints.cleanup(scanned, aside, sizes=sizes, free_bytes=free)
    newest_step = checkpoints.step_of(plan.newest) if plan.newest else -1
    folders = [
        {"name": p.name, "kind": "checkpoint", "step": checkpoints.step_of(p), "bytes": sizes[p], "complete": j.complete,
         "lacks": list(j.lacks), "resume": p == plan.newest, "optimizer": j.optimizer, "save_only_model": j.save_only_model,
         "own_cut": own, "older": bool(j.lacks) and (checkpoints.step_of(p) or 0) < (newest_step or 0), "notes": list(j.notes)}
        for (p, j), (_, _, own) in zip(judged, scanned, strict=True)
    ]  # fmt: skip
    folders += [
        {"name": p.name, "kind": "set-aside", "step": (checkpoints.set_aside_step(p) or (0, 0))[0], "bytes": sizes[p],
         "complete": False, "lacks": ["set aside by a resume: never resumed from"], "resume": False, "optimizer": None,
         "save_only_model": None, "own_cut": own, "older": False, "notes": []}
        for p, own in aside
    ]  # fmt: skip
    folders.sort(key=lambda f: (f["step"], f["kind"] == "checkpoint"))
    newest_checkpoint = judged[-1] if judged else None
    return {
        "output_dir": str(output_dir),
        "free_bytes": free,
        "folders": folders,
        "resume_from": plan.newest.name if plan.newest else None,
        "newest_incomplete": bool(newest_checkpoint and newest_checkpoint[1].lacks),
        "next_resume": {
            "set_aside": [{"name": p.name, "why": why} for p, why in plan.set_aside],
            "delete": [{"name": p.name, "why": why} for p, why in plan.delete],
            "kept": [p.name for p in plan.kept],
        },
    }


def render_inventory(report: dict[str, Any]) -> str:
    lines = [f"{report['output_dir']}: {report['free_bytes']} bytes free ({disk.human(report['free_bytes'])})"]
    if not report["folders"]:
        lines.append("  no checkpoint-N or set-aside folder")
    width = max([len(f["name"]) for f in report["folders"]] + [4])
    for f in report["folders"]:
        if f["complete"]:
            state = "complete"
            if f["optimizer"] is False and not f["save_only_model"]:
                state += " (its save wrote no optimizer state: a resume starts a fresh optimizer)"
            elif f["save_only_model"]:
                state += " (model only)"
        else:
            state = "incomplete: lacks " + "; ".join(f["lacks"])
            if f["own_cut"]:
                state += " (this package's own save, never committed)"
            if f["older"]:
                state += " (older than the checkpoint a resume takes: left as it is)"
        mark = "  <- a resume takes this one" if f["resume"] else ""
        lines.append(f"  {f['name']:<{width}}  step {f['step']:>6}  {f['bytes']:>12} bytes allocated  {state}{mark}")
        lines += [f"    note: {note}" for note in f["notes"]]
    lines.append(f"  resume: from {report['resume_from']}" if report["resume_from"] else "  resume: none (no complete checkpoint)")
    nxt = report["next_resume"]
    for d in nxt["set_aside"]:
        lines.append(f"  next auto-resume sets aside {d['name']} as incomplete-{d['name']} (a rename: nothing in it is removed)")
    for d in nxt["delete"]:
        lines.append(f"  next auto-resume deletes {d['name']}: {d['why']}")
    sizes = {f["name"]: f["bytes"] for f in report["folders"]}
    for name in nxt["kept"]:
        path = Path(report["output_dir"]) / name
        lines.append(
            f"  {name} ({sizes.get(name, 0)} bytes) is left as it is: not provably a cut save of this package; "
            f"delete it yourself once inspected (rm -r {path}) to free the space"
        )
    if report["newest_incomplete"]:
        lines.append("  the newest checkpoint-N is incomplete: stock Axolotl's resume would fail on it (exit 1)")
    return "\n".join(lines)


@contextlib.contextmanager
def _axolotl_output(verbose: bool) -> Iterator[Path | None]:
    """Everything written to fd 1 and 2 inside (Axolotl, torch, C extensions): stderr with ``verbose``, else a log file.

    Yields the log's path (None with ``verbose``); the caller deletes it when all went well.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = None if verbose else tempfile.NamedTemporaryFile(prefix="axolotl-savefix-plan-", suffix=".log", delete=False)
    target = os.dup(2) if log is None else log.fileno()
    os.dup2(target, 1)
    os.dup2(target, 2)
    try:
        yield None if log is None else Path(log.name)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()


def _schema_message(err: Any, raw: dict[str, Any]) -> str:
    """A pydantic ValidationError as one line: the config key, what is wrong, the value."""
    errors = err.errors()
    first = errors[0]
    key_parts: list[str] = []
    node: Any = raw
    for part in first.get("loc", ()):
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            key_parts.append(f"[{part}]")
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            key_parts.append(("." if key_parts else "") + part)
            node = node[part]
        else:
            break
    key = "".join(key_parts)
    head = tuple(first.get("loc", ()))[:1]
    same = [e for e in errors if tuple(e.get("loc", ()))[:1] == head]  # a union's branches: one key, several messages
    msgs = " or ".join(dict.fromkeys(str(e.get("msg", "")).removeprefix("Value error, ") for e in same))
    shown = f"{key}: {msgs} (got {node!r:.60})" if key else msgs
    more = len(errors) - len(same)
    return f"Axolotl's config schema refuses it: {shown}" + (f" (and {more} more; --verbose shows them)" if more > 0 else "")


def _axolotl_failure(err: BaseException, raw: dict[str, Any], set_offline: bool, log: Path | None) -> str:
    if type(err).__name__ == "ValidationError" and hasattr(err, "errors"):
        text = _schema_message(err, raw)
    else:
        text = f"Axolotl could not load it: {type(err).__name__}: {_first_line(str(err)) or 'no message'}"
        if set_offline and any(w in str(err).lower() for w in ("offline", "couldn't connect", "cached", "hub")):
            text += " (plan runs offline: HF_HUB_OFFLINE=0 lets it download, or give --steps-per-epoch N)"
    if log is not None:
        text += f"; Axolotl's log: {log}"
    return text


def _exit_within(seconds: float, code: int) -> None:
    """End the process with ``code`` ``seconds`` from now if the interpreter's exit (atexit handlers, threads) is stuck."""
    timer = threading.Timer(seconds, os._exit, args=(code,))
    timer.daemon = True
    timer.start()


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        found = axolotl_version()
        axolotl = "axolotl not installed" if found.startswith("(") else f"axolotl {found}"
        print(f"axolotl-savefix {savefix_version()} ({axolotl})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="axolotl-savefix", description="Exact checkpoints for Axolotl.")
    parser.add_argument("--version", action=_Version, nargs=0, help="this package's version and the Axolotl it finds")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="a traceback instead of the one-line error")
    common.add_argument("--verbose", action="store_true", help="Axolotl's own log and warnings, on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_cmd = commands.add_parser(
        "plan", parents=[common], help="print which steps a run saves, keeps and evaluates, stock and patched"
    )
    plan_cmd.add_argument("config", type=Path, help="the Axolotl YAML config")
    plan_cmd.add_argument(
        "--steps-per-epoch", type=int, metavar="N", help="optimizer steps per epoch: skip Axolotl and the data set"
    )
    plan_cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
    folders_cmd = commands.add_parser(
        "checkpoints",
        parents=[common],
        help="list output_dir's checkpoints: step, bytes, complete or what each lacks, what a resume takes",
    )
    folders_cmd.add_argument("output_dir", type=Path, help="the run's output_dir")
    folders_cmd.add_argument("--json", action="store_true", help="print the list as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``axolotl-savefix`` command; returns the exit status.

    ``argv`` None (the console script, ``python -m axolotl_savefix``): ``sys.argv``, and the
    process then exits within :data:`EXIT_GRACE_S` of returning (:func:`_exit_within`).
    """
    as_command = argv is None
    set_now = quiet_network()
    parser = _parser()
    args = parser.parse_args(argv)
    prog = f"axolotl-savefix {args.command}"
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        print(f"{prog}: stdout is closed: nowhere to write the answer (exit 2)", file=sys.stderr)
        return 2
    try:
        code = _run(args, parser, set_offline="HF_HUB_OFFLINE" in set_now)
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # the interpreter's last flush must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if args.debug:
            raise
        print(f"{prog}: stdout was closed before the answer was written (exit 2)", file=sys.stderr)
        code = 2
    except InputError as err:
        if args.debug:
            raise
        print(f"{prog}: {err}", file=sys.stderr)
        code = 2
    if as_command:
        _exit_within(EXIT_GRACE_S, code)
    return code


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, *, set_offline: bool) -> int:
    if args.command == "checkpoints":
        if not args.output_dir.is_dir():
            raise InputError(f"{args.output_dir} is not a folder: give the run's output_dir")
        report = inventory(args.output_dir)
        print(json.dumps(report) if args.json else render_inventory(report))
        return 1 if report["newest_incomplete"] else 0

    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch {args.steps_per_epoch}: give a positive number of optimizer steps per epoch")
    config = _config_file(args.config)
    raw = _read_yaml(config)
    try:  # what the patched run refuses at config time, the plan refuses too (it has no patched column)
        checks.check_save_config(raw)
        checks.check_eval_config(raw)
        checks.check_best_model_alignment(raw)
    except checks.SaveFixConfigError as err:
        raise InputError(f"{config}: {err}") from None
    if args.steps_per_epoch:
        result = plan_from_steps(raw, args.steps_per_epoch)
    else:
        with _axolotl_output(args.verbose) as log:
            try:
                result = plan_from_data(config, raw)
            except Exception as err:
                if args.debug:
                    raise
                raise InputError(f"{config}: {_axolotl_failure(err, raw, set_offline, log)}") from None
        if log is not None:
            log.unlink(missing_ok=True)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(render(result, str(args.config)))
    if result.disk_short:
        print(f"axolotl-savefix plan: {args.config}: this run will fill output_dir's disk (exit 1)", file=sys.stderr)
    return 1 if result.lost or result.disk_short else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
