"""The delivery checks import libraries from their own tools venv (see toolbox.py); the image
tests (marker `images`, test_zz_images.py) are the slowest, and run after the other delivery
checks."""

import pytest

from tests.delivery.toolbox import add_libraries_to_path

add_libraries_to_path()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "images: builds and runs the container images (slow)")
