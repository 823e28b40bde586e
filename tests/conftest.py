import os
import tempfile

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.server"]


def pytest_configure() -> None:
    # The suite never reads or writes the developer's own client config file
    # (~/.config/unistock/config.toml, which `make run` writes): every process it starts gets
    # a path of its own that does not exist, unless a test sets another.
    os.environ["UNISTOCK_CONFIG"] = os.path.join(
        tempfile.mkdtemp(prefix="unistock-test-config-"), "config.toml"
    )
