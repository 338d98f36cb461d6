"""End the test process with pytest's own exit status once every report is written.

After a whole session (in-process vLLM engines, Ray drivers, OTLP exporters, each leaving
native threads behind) the interpreter's own finalisation has crashed with SIGSEGV after every
test had passed (CI: "902 passed", then exit 139; not reproducible on a subset). What is under
test stops cleanly, as tests/test_clean_stop*.py show; the interpreter's teardown of those
libraries is not under test. scripts/test.sh sets PYTHONFAULTHANDLER, so a crash before this
point still prints every thread's stack. ``LISTENPOST_TEST_FULL_TEARDOWN=1`` turns this off.
tests/test_hard_exit.py shows that failures still fail the run.
"""

from __future__ import annotations

import os
import sys

import pytest

_SESSION = pytest.StashKey[pytest.Session]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is None or os.environ.get("LISTENPOST_TEST_FULL_TEARDOWN"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))
