"""The read planner: merged reads within the device's limits, and what merging saves on the shipped maps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.planner import ReadLimits, ReadRequest, plan_per_point, plan_reads
from drivers.modbus.register_maps import InputType
from tests.fixtures.modbus import MAPS, shipped_map


@dataclass(frozen=True)
class P:
    input_type: InputType
    address: int
    span: int = 1


def test_contiguous_points_merge_and_gaps_split_unless_bridged() -> None:
    points = [P("holding", 0), P("holding", 1, 2), P("holding", 3), P("holding", 10)]
    assert plan_reads(points, ReadLimits(max_gap=0)) == [
        ReadRequest("holding", 0, 4, ((0, 0), (1, 1), (2, 3))), ReadRequest("holding", 10, 1, ((3, 0),))]
    assert plan_reads(points, ReadLimits(max_gap=6)) == [
        ReadRequest("holding", 0, 11, ((0, 0), (1, 1), (2, 3), (3, 10)))]


def test_tables_are_read_apart_in_a_fixed_order() -> None:
    points = [P("coil", 0), P("input", 0), P("holding", 0), P("discrete_input", 0)]
    assert [r.table for r in plan_reads(points, ReadLimits())] == ["holding", "input", "coil", "discrete_input"]


@pytest.mark.parametrize(("table", "limit", "size"), [("holding", 125, 2), ("input", 32, 1), ("coil", 2000, 1)])
def test_a_read_never_exceeds_the_limit(table: InputType, limit: int, size: int) -> None:
    points = [P(table, a, size) for a in range(0, 5000, size)]
    limits = ReadLimits(max_registers=min(limit, 125), max_bits=2000, max_gap=10)
    plan = plan_reads(points, limits)
    cap = 2000 if table == "coil" else min(limit, 125)
    assert all(r.count <= cap for r in plan)
    covered = sorted(i for r in plan for i, _ in r.points)
    assert covered == list(range(len(points)))
    for r in plan:  # every point lies inside its read at its offset
        for index, offset in r.points:
            assert points[index].address == r.address + offset
            assert offset + points[index].span <= r.count


def test_the_s8_is_never_read_across_its_refused_registers() -> None:
    s8 = shipped_map("senseair_s8.toml")
    plan = plan_reads(s8.points(), ReadLimits(32, 2000, s8.spec.max_gap))
    input_reads = [(r.address, r.count) for r in plan if r.table == "input"]
    assert (0, 4) in input_reads  # IR1..IR4 in one read, as the vendor's example frame
    assert all(not (a < 8 and a + n > 4) for a, n in input_reads)  # IR5..IR8 answer exception 02


def test_merging_the_shipped_maps_needs_at_least_three_times_fewer_requests() -> None:
    total_merged = total_single = 0
    for path in sorted(MAPS.glob("*.toml")):
        m = shipped_map(path.name)
        points = m.points()
        merged = plan_reads(points, ReadLimits(m.spec.max_registers_per_read, m.spec.max_coils_per_read,
                                               m.spec.max_gap))
        assert all(r.count <= m.spec.max_registers_per_read for r in merged if r.table in ("holding", "input"))
        total_merged += len(merged)
        total_single += len(plan_per_point(points))
    assert total_single >= 3 * total_merged, (total_single, total_merged)


def test_sdm_reads_start_even_and_count_even() -> None:
    """Eastron meters answer exception 02 to an odd start or count."""
    for name in ("eastron_sdm630.toml", "eastron_sdm120.toml"):
        m = shipped_map(name)
        for r in plan_reads(m.points(), ReadLimits(80, 2000, m.spec.max_gap)):
            assert r.address % 2 == 0 and r.count % 2 == 0 and r.count <= 80


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.tuples(st.sampled_from(["holding", "input", "coil"]), st.integers(0, 400),
                                 st.sampled_from([1, 2, 4])), min_size=1, max_size=60),
       max_gap=st.integers(0, 20), max_registers=st.integers(4, 125))
def test_any_plan_covers_every_point_within_the_limits(points: list[tuple[InputType, int, int]], max_gap: int,
                                                       max_registers: int) -> None:
    placed = [P(table, address, 1 if table == "coil" else span) for table, address, span in points]
    plan = plan_reads(placed, ReadLimits(max_registers, 2000, max_gap))
    assert sorted(i for r in plan for i, _ in r.points) == list(range(len(placed)))
    for r in plan:
        assert r.count <= (2000 if r.table == "coil" else max_registers)
        spans = sorted((placed[i].address, placed[i].address + placed[i].span) for i, _ in r.points)
        covered_to = spans[0][1]
        for start, end in spans[1:]:
            assert start - covered_to <= max_gap  # never bridges more unused registers than the device allows
            covered_to = max(covered_to, end)
        for index, offset in r.points:
            assert placed[index].input_type == r.table and placed[index].address == r.address + offset
