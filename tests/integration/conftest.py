# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
Fixtures of the integration suite: real C{twistd} servers on loopback and a test PKI.

Every server a test starts logs to a file under its C{tmp_path}; when the test fails,
the logs are attached to its report (shown as "twistd log" sections).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest
import pytest_twisted

from tests.integration._support import PKI, ServerFarm, TwistdServer, make_pki

_FARM = pytest.StashKey[ServerFarm]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the test's twistd servers to the report of a failed phase."""
    report = yield
    farm = item.stash.get(_FARM, None)
    if report.failed and farm is not None:
        for log in farm.logs:
            try:
                text = log.read_text(errors="replace")
            except OSError as e:
                text = f"(cannot read: {e})"
            name = log.relative_to(farm.directory)
            report.sections.append((f"twistd log {name} ({report.when})", text))
    return report


@pytest_twisted.async_yield_fixture
async def servers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ServerFarm]:
    """Starts twistd servers for a test, and stops every one of them afterwards."""
    farm = ServerFarm(tmp_path)
    request.node.stash[_FARM] = farm
    try:
        yield farm
    finally:
        await farm.stop()


@pytest_twisted.async_yield_fixture
async def msgserver(servers: ServerFarm) -> AsyncIterator[TwistdServer]:
    """A plain C{twistd -n --pidfile= lips-msgserver} on a free loopback port."""
    yield await servers.start()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A test CA with server and client certificates, and a rogue CA (see make_pki)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
