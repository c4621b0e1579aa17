"""Demo: the same tiny fine-tune, stock and with the fix, through the real `axolotl train` CLI."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import cases  # noqa: E402
import harness  # noqa: E402


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
        observed = harness.run_cli(harness.write_config(case, root / variant, plugin=plugin))
        rows.append((variant, observed))
    print()
    print(f"{'run':<8} {'saved at steps':<40} {'kept on disk'}")
    for variant, observed in rows:
        print(f"{variant:<8} {' '.join(map(str, observed.saved)):<40} {' '.join(map(str, observed.kept))}")
    print(f"\nlogs and checkpoints: {root}")


if __name__ == "__main__":
    main()
