"""The delivery checks import libraries from their own tools venv (see toolbox.py); the image
tests (marker `images`) run after every other test of the session: they are the slowest."""

import pytest

from tests.delivery.toolbox import add_libraries_to_path

add_libraries_to_path()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "images: builds and runs the container images (slow; runs last)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("images") is not None)
