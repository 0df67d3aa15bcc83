"""The delivery checks import libraries from their own tools venv (see toolbox.py); the image
tests (marker `images`) are the slowest, and run after every other test when the suite runs in
one process (`make test PYTEST_WORKERS=0`); under pytest-xdist the scheduler hands files out
by their number of tests instead, so they run beside other files."""

import pytest

from tests.delivery.toolbox import add_libraries_to_path

add_libraries_to_path()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "images: builds and runs the container images (slow; last in a one-process run)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("images") is not None)
