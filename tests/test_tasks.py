"""Stopping a background loop for certain (services/events/tasks.py)."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from services.events.tasks import cancel_and_wait


def a_loop_of_requests(replies: asyncio.Queue[asyncio.Future[None]], turns: list[int]) -> asyncio.Task[None]:
    """A loop shaped like the notifier's aggregation-group looks: each turn awaits a reply
    through ``asyncio.wait_for``, as every nats-py request does."""

    async def loop() -> None:
        while True:
            reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await replies.put(reply)
            await asyncio.wait_for(reply, timeout=30)
            turns.append(len(turns))

    return asyncio.get_running_loop().create_task(loop(), name="looks")


async def cancel_as_the_reply_arrives(replies: asyncio.Queue[asyncio.Future[None]], task: asyncio.Task[None]) -> None:
    reply = await replies.get()
    reply.set_result(None)  # the reply lands ...
    task.cancel()  # ... in the same loop step as the stop


async def test_one_cancel_that_arrives_with_a_reply_is_lost_on_python_3_11() -> None:
    """The fault itself (CPython gh-86296): why a plain ``cancel(); await`` could hang."""
    replies: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    turns: list[int] = []
    task = a_loop_of_requests(replies, turns)
    await cancel_as_the_reply_arrives(replies, task)
    await asyncio.wait({task}, timeout=0.5)
    try:
        if sys.version_info < (3, 12):
            assert not task.done() and turns == [0]  # the loop took the reply and went on
        else:
            assert task.cancelled()
    finally:
        await cancel_and_wait(task)


async def test_cancel_and_wait_stops_a_loop_that_lost_a_cancel() -> None:
    replies: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    turns: list[int] = []
    task = a_loop_of_requests(replies, turns)
    await cancel_as_the_reply_arrives(replies, task)
    assert await cancel_and_wait(task, timeout_s=5) is True
    assert task.cancelled()


async def test_a_task_that_will_not_stop_is_left_behind_by_name_within_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # swallows every cancel

    task = asyncio.get_running_loop().create_task(stubborn(), name="stubborn-loop")
    await asyncio.sleep(0.05)  # running, inside its try
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.ERROR):
        assert await cancel_and_wait(task, timeout_s=1.0) is False
    assert asyncio.get_running_loop().time() - started < 2.0
    assert "task stubborn-loop did not stop within 1 s of being cancelled; left running" in caplog.text
    release.set()
    await task


async def test_a_task_that_had_failed_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise ConnectionError("nats: connection closed")

    task = asyncio.get_running_loop().create_task(broken(), name="status-reports")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        assert await cancel_and_wait(task) is True
    assert "task status-reports had failed before it was stopped: ConnectionError: nats: connection closed" in caplog.text


async def test_no_task_is_nothing_to_stop() -> None:
    assert await cancel_and_wait(None) is True
