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
import os
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from .._infra.releases import axolotl_version, savefix_version
from ..rules import checks
from ..rules.plan import render
from .checkpoints import inventory, render_inventory
from .errors import InputError
from .plan import (  # noqa: F401 - the plan command's steps, named by the tests and the example corpus
    _axolotl_failure,
    _axolotl_output,
    _config_file,
    _datasets,
    _read_yaml,
    estimate_bytes,
    plan_from_data,
    plan_from_steps,
    prepared_on_disk,
)

# Axolotl 0.13.2 to 0.21.0 read AXOLOTL_DO_NOT_TRACK (0.17+ also DO_NOT_TRACK, 0.13-0.16 only
# when AXOLOTL_DO_NOT_TRACK is one of 0/1/true/false); posthog's host is a constant there, not a setting.
TELEMETRY_OFF = {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1"}
# huggingface_hub, transformers and datasets: no lookup at all (a local cache still works)
HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
EXIT_GRACE_S = 10.0  # a command exits this long after its output at the latest


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
