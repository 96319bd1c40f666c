"""The stage rules of tests/bench/cpu_stages.py: a sampled stack goes to the stage of its innermost named frame."""

from __future__ import annotations

from tests.bench.cpu_stages import OTHER, stage_of, stages_of

LOOP = "BaseEventLoop._run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80)"


def test_a_library_frame_counts_for_the_code_that_called_it() -> None:
    stack = (f"{LOOP};_reader_loop (gateway/broker/amqtt/reader_loop.py:160);"
             "PurifierDriver.decode_reading (drivers/purifier.py:45);JSONDecoder.decode (json/decoder.py:337)")
    assert stage_of(stack.split(";")) == "ingest: decode, validate"


def test_paho_reads_and_writes_are_the_uplinks_and_waits_are_not_counted() -> None:
    write = f"{LOOP};callback (aiomqtt/client.py:730);Client.loop_write (paho/mqtt/client.py:2123)"
    assert stage_of(write.split(";")) == "uplink: socket writes"
    idle = "BaseEventLoop._run_once (asyncio/base_events.py:1884);EpollSelector.select (selectors.py:468)"
    worker = "Thread.run (threading.py:982);_connection_worker_thread (aiosqlite/core.py:59)"
    lines = [f"{idle} 40", f"{worker} 30", f"{write} 7", f"{LOOP} 3", "garbage"]
    assert stages_of(lines) == {"uplink: socket writes": 7, OTHER: 3}
