"""One rank of the 16-process decision test (tests/e2e/test_decision_gloo.py), started by torchrun.

Joins the default gloo group (torchrun's environment), takes the resume decision on ``argv[1]``
(this node's ``output_dir``), counting its ``open`` calls, and writes what it decided to
``argv[2]/rank-R.json``.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from axolotl_savefix._infra import collectives as agreement

dist.init_process_group("gloo")
opened = []
sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" else None)
start = time.perf_counter()
verdict = agreement.agree_on_resume(sys.argv[1])
took = time.perf_counter() - start
count = len([p for p in opened if not str(p).endswith(".pyc")])  # imports are not the decision
rank = int(os.environ["RANK"])
result = {
    "opened": [str(p) for p in opened if not str(p).endswith(".pyc")],
    "rank": rank,
    "step": verdict.step,
    "error": verdict.error,
    "walked": verdict.walked,
    "opens": count,
    "rounds": verdict.rounds,
    "seconds": took,
}
Path(sys.argv[2], f"rank-{rank}.json").write_text(json.dumps(result))
dist.destroy_process_group()
