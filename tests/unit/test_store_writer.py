"""The store writer on a real SQLite file: device-controlled strings cannot break or inject SQL."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from gateway.core.metrics import Metrics
from gateway.core.models import Quarantined, Reading
from gateway.store.writer import StoreWriter

HOSTILE = ["it's", "'); DROP TABLE readings; --", "nul\x00byte", "uni\u2028code", "back\\slash", '"quoted"']


async def test_hostile_strings_are_stored_verbatim_and_the_writer_keeps_running(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), outbox=True)
    await writer.open()
    task = asyncio.create_task(writer.run())
    for i, text in enumerate(HOSTILE):
        await writer.put(Reading("AP-01", 1763800000.0 + i, 1763800000.5, {"pm25": 1.0}, {"note": text}))
        await writer.put(Quarantined(1763800000.0, text, "device/AP-01/data", text.encode(), text, "AP-01"))
    await asyncio.wait_for(writer.flush(), 10)  # before the fix the writer died on the NUL and this hung
    await writer.close()
    await task
    with sqlite3.connect(tmp_path / "g.db") as conn:
        notes = [json.loads(e)["note"] for (e,) in conn.execute("SELECT extra FROM readings ORDER BY id")]
        assert notes == HOSTILE  # JSON keeps even the NUL
        rows = conn.execute("SELECT client_id, reason, payload FROM quarantine ORDER BY id").fetchall()
        assert [r[2] for r in rows] == [t.encode() for t in HOSTILE]  # payloads byte for byte
        assert [r[1] for r in rows] == [t.replace("\x00", "\ufffd") for t in HOSTILE]
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2 * len(HOSTILE)
