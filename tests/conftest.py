import os
import tempfile

import pytest

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.server"]


def pytest_configure() -> None:
    # The suite never reads or writes the developer's own client config file
    # (~/.config/unistock/config.toml, which `make run` writes): every process it starts gets
    # a path of its own that does not exist, unless a test sets another.
    os.environ["UNISTOCK_CONFIG"] = os.path.join(
        tempfile.mkdtemp(prefix="unistock-test-config-"), "config.toml"
    )


@pytest.fixture(autouse=True)
def _own_client_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test its own client config path (not existing): a `make run` started by one test
    writes the file it names, and no other test may read that."""
    path = tmp_path_factory.mktemp("client-config") / "config.toml"
    monkeypatch.setenv("UNISTOCK_CONFIG", str(path))
    # ...and its own outbox directory for `unistock move SOURCE next`
    monkeypatch.setenv("UNISTOCK_OUTBOX_DIR", str(path.parent / "outbox"))
