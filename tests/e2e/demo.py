"""Demo: the same tiny fine-tune, stock and with the fix, through the real `axolotl train` CLI.

The demo's own output is filtered: importing torch, torchao and bitsandbytes on a
CPU machine prints warnings ("Failed to load .../torchao/_C_....so") that a reader
takes for a failure of the fix. They are counted, not shown. The training logs
kept on disk (``train.log`` next to each config) are complete.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import cases  # noqa: E402
import harness  # noqa: E402
import reference  # noqa: E402
from demo_summary import run_summary  # noqa: E402


def summary(variant: str, observed: harness.Observed, case: dict) -> str:
    """The run's one line, from its checkpoints and the config (steps per epoch read back from its log)."""
    grad_accum = case["grad_accum"]
    batches = observed.batches_per_epoch(grad_accum)
    walk = reference.walk(batches, grad_accum, observed.max_steps)
    epoch_ends = [step for step, _, consumed, _ in walk if consumed == batches]
    asked = len(reference.patched_saves(batches, grad_accum, case["saves_per_epoch"], observed.max_steps))
    return run_summary(variant, observed.saved, observed.kept, epoch_ends, asked, case["save_total_limit"])


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "reported"
    case = cases.case(name)
    root = Path(tempfile.mkdtemp(prefix="savefix-demo-"))
    print(
        f"case {name!r}: {case['samples']} samples, micro batch {case['micro_batch']}, "
        f"gradient accumulation {case['grad_accum']}, saves_per_epoch: {case['saves_per_epoch']}, "
        f"num_epochs: {case['num_epochs']}, save_total_limit: {case['save_total_limit']}",
        flush=True,
    )
    rows = []
    for variant, plugin in (("stock", False), ("patched", True)):
        print(f"  running axolotl train ({variant}) ...", flush=True)
        observed = harness.run_cli(harness.write_config(case, root / variant, plugin=plugin), forked=False)
        rows.append((variant, observed))
    print()
    print(f"{'run':<8} {'saved at steps':<40} {'kept on disk'}")
    for variant, observed in rows:
        print(f"{variant:<8} {' '.join(map(str, observed.saved)):<40} {' '.join(map(str, observed.kept))}")
        print(f"         {summary(variant, observed, case)}")
    print(f"\nlogs and checkpoints: {root}")


# import-time noise of torch/torchao/bitsandbytes on a CPU-only machine, none of it ours
NOISE = re.compile(
    r"Failed to load .*(torchao|\.so)|torch/utils/_pytree\.py|gemm_4bit_forward|kernels-community"
    r"|Writing model shards|^\s*gemm_4bit_forward_kernel = "
)


def filtered() -> int:
    """Run this script again as a child and pass its output through, without the import noise."""
    env = {**os.environ, "SAVEFIX_DEMO_CHILD": "1"}
    child = subprocess.Popen(
        [sys.executable, __file__, *sys.argv[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    hidden, after_hidden = 0, False
    assert child.stdout is not None
    for line in child.stdout:
        if NOISE.search(line) and not line.startswith(("run ", "stock ", "patched ", "         ")):
            hidden, after_hidden = hidden + 1, True
            continue
        if after_hidden and not line.strip():  # the blank line a hidden warning ends with
            continue
        after_hidden = False
        print(line, end="", flush=True)
    code = child.wait()
    if hidden:
        print(f"({hidden} lines of torch/torchao/bitsandbytes import warnings on this CPU machine hidden; not from the fix)")
    return code


if __name__ == "__main__":
    if os.environ.get("SAVEFIX_DEMO_CHILD"):
        main()
    else:
        sys.exit(filtered())
