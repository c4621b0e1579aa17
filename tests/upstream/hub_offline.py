"""A pytest plugin for running Axolotl's own test suite with no network (``-p hub_offline``).

Axolotl's ``tests/conftest.py`` downloads models and data sets in session-wide
autouse fixtures. Here nothing can be downloaded, so ``snapshot_download``
returns an empty folder: the tests that do not need those files run, the ones
that do fail on their own, the same way with and without the change (the
upstream session compares both).
"""

import os
import tempfile

import huggingface_hub

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1")
_EMPTY = tempfile.mkdtemp(prefix="no-hub-")


def _no_download(*args, **kwargs):
    return _EMPTY


huggingface_hub.snapshot_download = _no_download
