"""Helpers the power tests share (imported by name: pytest puts this directory on the path)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
from click.testing import Result

Run = Callable[..., Result]


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (run scripts/install-system-deps.sh)")
