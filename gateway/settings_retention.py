"""The `[retention]` config section: how long each table keeps its rows, the database's size cap, and how the
data lifecycle job (rollups, retention; gateway/store/lifecycle.py) paces itself."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Days = Annotated[float, Field(gt=0)]


class RetentionSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Rows older than this many days (by their own time) are deleted.
    readings_days: Days = 90.0
    rollup_hourly_days: Days = 365.0
    rollup_daily_days: Days = 1826.0  # 5 years
    events_days: Days = 90.0
    quarantine_days: Days = 30.0
    command_log_days: Days = 30.0  # finished commands only: a pending or sent one stays
    schedule_runs_days: Days = 90.0
    rpc_log_days: Days = 30.0  # answers kept so a repeated JSON-RPC request id is not executed twice
    # The database's cap in MB of pages in use (0: none). Over it, the oldest raw readings go first, an hour at
    # a time across all devices, and a `storage.size_cap` event says how many. The outbox is never touched
    # (its own budget, [outbox], bounds it). 100 purifiers at 1 reading / 10 s with every window full take
    # 0.8-1.6 GB, raw readings compacted (README, "Data lifecycle"): this default is a guard, not the window.
    max_db_mb: Annotated[int, Field(ge=0)] = 2048
    # Raw readings are rows as they arrive (a commit per batch, the device's PUBACK after it); each pass moves
    # the readings of every device-hour that ended this many hours ago into one compact row per device and
    # hour (a few bytes a reading instead of ~160; README, "Data lifecycle"). Reads take both forms. 0: never.
    compact_after_hours: Annotated[float, Field(ge=0)] = 2.0
    # Retention runs at start and then this often.
    interval_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 60.0
    # New readings are folded into the hourly/daily rollups this often, this many per transaction (history
    # reads add the readings not folded yet, so this only bounds how many those are). A fold holds the writer
    # (2,000 readings took 19-50 ms beside 1,000 readings/s of ingest), so a step folds at most 500; with the
    # pauses between steps the catch-up still folds thousands of readings a second.
    rollup_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    rollup_batch_readings: Annotated[int, Field(ge=10, le=100_000)] = 500
    # A step (one transaction) is sized to take about step_target_ms, at most batch_rows rows; between two the
    # job pauses pause_ms, while the writer commits the readings that waited. Ingest's commits wait for at most
    # about one step.
    step_target_ms: Annotated[float, Field(gt=0, le=1000)] = 2.0
    batch_rows: Annotated[int, Field(ge=100, le=100_000)] = 5000
    pause_ms: Annotated[float, Field(ge=0, le=10_000)] = 50.0
    # Free pages handed back to the file system per step (incremental auto-vacuum), beyond the free space kept
    # for the next inserts (pages kept free are reused without growing the file; moving pages costs writes).
    reclaim_step_pages: Annotated[int, Field(ge=1)] = 1024
    keep_free_mb: Annotated[float, Field(ge=0)] = 16.0

    @model_validator(mode="after")
    def _rollups_outlive_readings(self) -> RetentionSection:
        if self.rollup_hourly_days < self.readings_days:
            raise ValueError("rollup_hourly_days must not be shorter than readings_days (history reads hourly "
                             "rollups where raw readings are gone)")
        if self.rollup_daily_days < self.rollup_hourly_days:
            raise ValueError("rollup_daily_days must not be shorter than rollup_hourly_days")
        return self

    def windows(self) -> dict[str, float]:
        """Table -> days kept."""
        return {
            "readings": self.readings_days,
            "rollup_hourly": self.rollup_hourly_days,
            "rollup_daily": self.rollup_daily_days,
            "events": self.events_days,
            "quarantine": self.quarantine_days,
            "command_log": self.command_log_days,
            "schedule_runs": self.schedule_runs_days,
            "rpc_log": self.rpc_log_days,
        }
