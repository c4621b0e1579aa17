import pytest


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory):
    """One folder for the whole matrix: the fixture model and prepared data sets are built once."""
    return tmp_path_factory.mktemp("e2e")
