"""The fixture of the ``amphora deploy`` tests."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from deploy_helpers import new_directory


@pytest.fixture
def deployment_dir() -> Iterator[Path]:
    with new_directory() as directory:
        yield directory
