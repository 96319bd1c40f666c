"""The suite's own guards, run on small test files in a child pytest: a leaked task or thread fails its
test, and a hung test's report names the task that waits (tests/fixtures/leaks.py, hang_report.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]

LEAKY = '''
import asyncio, threading, time

async def test_leaves_a_task() -> None:
    asyncio.create_task(asyncio.Event().wait(), name="forgotten")

def test_leaves_a_thread() -> None:
    threading.Thread(target=time.sleep, args=(5,), name="lingering", daemon=True).start()

async def test_a_task_cancelled_on_the_way_out_is_fine() -> None:
    asyncio.create_task(asyncio.Event().wait()).cancel()

def test_a_thread_that_is_ending_is_fine() -> None:
    threading.Thread(target=time.sleep, args=(0.2,)).start()
'''

HANGS = '''
import asyncio

async def test_hangs() -> None:
    async def waits_for_nothing() -> None:
        await asyncio.Event().wait()

    await asyncio.create_task(waits_for_nothing(), name="the-waiter")
'''


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, *args: str) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_it=source)
    return pytester.runpytest_subprocess(
        "-p", "tests.fixtures.leaks", "-p", "tests.fixtures.hang_report", "-o", "asyncio_mode=auto",
        "-o", "asyncio_default_fixture_loop_scope=function", "-p", "no:cacheprovider", *args, timeout=60,
    )


@pytest.mark.slow
@pytest.mark.timeout(90)  # a child pytest, and the guards' grace periods
def test_a_leaked_task_or_thread_fails_its_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(pytester, monkeypatch, LEAKY)
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines([
        "*the test left 1 asyncio task(s) pending:*",
        "*forgotten*",
        "*the test left 1 thread(s) running: lingering*",
    ])


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_hung_test_is_reported_with_the_task_it_waits_for(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(pytester, monkeypatch, HANGS, "-o", "timeout=2", "-o", "timeout_method=thread")
    assert result.ret != 0
    result.stdout.fnmatch_lines([
        "*asyncio tasks of*",
        "*Task the-waiter*",
        "*await asyncio.Event().wait()*",
        "*+ Timeout +*",
    ])
