import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tests/reference.py, tests/fixture.py

import os  # noqa: E402

from fixture import OFFLINE  # noqa: E402

os.environ.update(OFFLINE)
