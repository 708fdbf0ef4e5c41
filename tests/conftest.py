"""Where the suite's temporary files go.

The embedded PostgreSQL runs as its own system user, which must be able to walk the path to its
data directory. pytest's default base (a shared directory per user) is reset to mode 0700 by every
new pytest session, so a second session started on the same machine (an editor's test run, another
checkout) would cut a running server off from its files mid-test. Each session here gets its own
directory under one parent that nothing resets; directories of sessions that have ended are
removed when the next one starts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is not None:
        return
    root = Path(tempfile.gettempdir()) / f"aidledger-pytest-{os.getuid()}"
    root.mkdir(mode=0o755, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    config.option.basetemp = str(root / str(os.getpid()))
