"""The scale benchmark's row (bench.scale_row) against issue 29's bounds, at W = 1,024, 8 per node, C = 20.

Bounds from the issue's "Done when", not from a run: per rank at most 64 KiB gathered, 16 opens
for a rank that is not a walker, 64 for a walker: counts, the same on any machine. The issue's time
bound (0.5 s per rank) is a speed claim: `nox -s bench -- scale` measures it, no test times it. The
agreed step follows from the fixture: checkpoints every 10 steps, the newest (200) cut when asked.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402

WORLD, COUNT, PER_NODE, EVERY = 1024, 20, 8, 10


@pytest.mark.parametrize(
    ("layout", "cut", "walkers"), [("shared", False, 1), ("local", False, WORLD // PER_NODE), ("shared", True, 1)]
)
def test_the_decision_at_1024_ranks_stays_within_the_issue_bounds(layout, cut, walkers):
    row = bench.scale_row(WORLD, COUNT, PER_NODE, layout=layout, cut=cut)
    assert row["agreed_step"] == (COUNT - cut) * EVERY
    assert row["walkers"] == walkers
    assert row["bytes_gathered_per_rank_max"] <= 64 * 1024
    assert row["opens_per_rank_max"] <= 16
    assert row["opens_per_walker_max"] <= 64
