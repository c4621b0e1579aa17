import pytest

import axolotl_savefix


@pytest.fixture(autouse=True)
def _clean_patches():
    axolotl_savefix.revert()
    yield
    axolotl_savefix.revert()
