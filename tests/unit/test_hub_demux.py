"""The demultiplexer's state machine (gateway/ingest/demux.py): reassembly in any order, duplicates, timeout,
per-hub limits, restart."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.hub_batches import BatchPart
from gateway.ingest.demux import Demux, DemuxLimits, Verdict

T0 = 1_763_800_000.0


def part(batch_id: str, n: int, parts: int) -> BatchPart:
    return BatchPart(batch_id, n, parts, 1)


def payload(batch_id: str, n: int, size: int = 10) -> int:
    """The size of a part's payload: the demultiplexer keeps sizes, the parts themselves wait in SQLite."""
    return size


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A batch of n parts as a hub might deliver it: every part, in any order, some several times."""
    parts = draw(st.integers(min_value=1, max_value=40))
    order = draw(st.permutations(list(range(1, parts + 1))))
    repeats = draw(st.lists(st.tuples(st.integers(1, parts), st.integers(0, 10_000)), max_size=30))
    out = list(order)
    for number, where in repeats:
        out.insert(where % (len(out) + 1), number)
    return parts, out


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_order_and_duplicates_give_each_part_once_in_exactly_one_completion(case: tuple[int, list[int]]) -> None:
    parts, order = case
    demux = Demux(DemuxLimits())
    verdicts = []
    completed = []
    for i, number in enumerate(order):
        offer = demux.offer("HUB-1", part("b-1", number, parts), payload("b-1", number), T0 + i * 0.01)
        verdicts.append(offer.verdict)
        assert not offer.evicted
        if offer.verdict is Verdict.COMPLETE:
            assert offer.batch is not None
            completed.append(offer.batch)
    assert len(completed) == 1
    batch = completed[0]
    assert sorted(batch.held) == list(range(1, parts + 1))
    assert batch.size == payload("b-1", 1) * (parts - 1)  # the parts held before the last one, each counted once
    assert verdicts.count(Verdict.HELD) == parts - 1
    assert verdicts.count(Verdict.DUPLICATE) == len(order) - parts
    assert demux.held_bytes() == 0 and demux.next_deadline() is None


def test_an_incomplete_batch_is_given_up_at_its_timeout_and_a_late_part_is_refused() -> None:
    demux = Demux(DemuxLimits(timeout=60.0))
    assert demux.offer("HUB-1", part("b-1", 2, 3), payload("b-1", 2), T0).verdict is Verdict.HELD
    assert demux.offer("HUB-1", part("b-1", 1, 3), payload("b-1", 1), T0 + 10).verdict is Verdict.HELD
    assert demux.next_deadline() == T0 + 60.0  # from the first part
    assert demux.expire(T0 + 59.9) == []
    [given_up] = demux.expire(T0 + 60.0)
    assert sorted(given_up.held) == [1, 2] and given_up.missing() == [3]
    assert demux.held_bytes("HUB-1") == 0
    late = demux.offer("HUB-1", part("b-1", 3, 3), payload("b-1", 3), T0 + 61)
    assert late.verdict is Verdict.REFUSED and "after the batch was given up" in late.reason
    # Once the id is forgotten (a timeout after the close), it opens a new batch.
    assert demux.offer("HUB-1", part("b-1", 3, 3), payload("b-1", 3), T0 + 121).verdict is Verdict.HELD


def test_a_part_of_a_completed_batch_sent_again_is_a_duplicate() -> None:
    demux = Demux(DemuxLimits())
    assert demux.offer("HUB-1", part("b-1", 1, 2), payload("b-1", 1), T0).verdict is Verdict.HELD
    assert demux.offer("HUB-1", part("b-1", 2, 2), payload("b-1", 2), T0).verdict is Verdict.COMPLETE
    assert demux.offer("HUB-1", part("b-1", 1, 2), payload("b-1", 1), T0 + 5).verdict is Verdict.DUPLICATE
    assert demux.offer("HUB-1", part("b-2", 1, 1), payload("b-2", 1), T0).verdict is Verdict.COMPLETE  # one part


def test_parts_that_contradict_their_batch_or_the_limit_are_refused() -> None:
    demux = Demux(DemuxLimits(max_parts=100))
    demux.offer("HUB-1", part("b-1", 1, 3), payload("b-1", 1), T0)
    offer = demux.offer("HUB-1", part("b-1", 2, 4), payload("b-1", 2), T0)
    assert offer.verdict is Verdict.REFUSED and "says 4 parts, its first part said 3" in offer.reason
    offer = demux.offer("HUB-1", part("b-2", 1, 101), payload("b-2", 1), T0)
    assert offer.verdict is Verdict.REFUSED and "more than the 100" in offer.reason


def test_one_batch_too_many_gives_up_the_hubs_oldest_batch_and_other_hubs_are_untouched() -> None:
    demux = Demux(DemuxLimits(max_open=3))
    demux.offer("HUB-2", part("x", 1, 2), payload("x", 1), T0)
    for i in range(3):
        assert demux.offer("HUB-1", part(f"b-{i}", 1, 2), payload(f"b-{i}", 1), T0 + i).verdict is Verdict.HELD
    offer = demux.offer("HUB-1", part("b-3", 1, 2), payload("b-3", 1), T0 + 3)
    assert offer.verdict is Verdict.HELD
    assert [(b.batch_id, "newer batch" in why) for b, why in offer.evicted] == [("b-0", True)]
    assert [b.batch_id for b in demux.open_batches("HUB-1")] == ["b-1", "b-2", "b-3"]
    assert [b.batch_id for b in demux.open_batches("HUB-2")] == ["x"]


def test_bytes_held_per_hub_are_bounded() -> None:
    demux = Demux(DemuxLimits(max_bytes=1000))
    demux.offer("HUB-1", part("a", 1, 9), payload("a", 1, 400), T0)
    demux.offer("HUB-1", part("b", 1, 9), payload("b", 1, 400), T0 + 1)
    assert demux.held_bytes("HUB-1") == 800
    # A part that does not fit gives up the oldest other batch.
    offer = demux.offer("HUB-1", part("b", 2, 9), payload("b", 2, 400), T0 + 2)
    assert offer.verdict is Verdict.HELD and [b.batch_id for b, _ in offer.evicted] == ["a"]
    assert demux.held_bytes("HUB-1") == 800
    # A batch that alone would hold more is given up with the part that overflows it.
    offer = demux.offer("HUB-1", part("b", 3, 9), payload("b", 3, 400), T0 + 3)
    assert offer.verdict is Verdict.REFUSED and "more than the 1000 bytes" in offer.reason
    assert [b.batch_id for b, _ in offer.evicted] == ["b"]
    assert demux.held_bytes("HUB-1") == 0 and demux.open_batches("HUB-1") == []
    # A single part larger than the limit is refused at once.
    offer = demux.offer("HUB-1", part("c", 1, 2), payload("c", 1, 1001), T0 + 4)
    assert offer.verdict is Verdict.REFUSED and offer.evicted == []


def test_a_restored_batch_completes_with_the_missing_part_and_keeps_its_deadline() -> None:
    demux = Demux(DemuxLimits(timeout=60.0))
    demux.restore("HUB-1", "b-1", 2, 3, payload("b-1", 2), T0 + 5)
    demux.restore("HUB-1", "b-1", 1, 3, payload("b-1", 1), T0)
    demux.remember("HUB-1", "b-0", T0 - 1, True)
    assert demux.next_deadline() == T0 + 60.0
    assert demux.offer("HUB-1", part("b-0", 1, 1), payload("b-0", 1), T0 + 10).verdict is Verdict.DUPLICATE
    assert demux.offer("HUB-1", part("b-1", 1, 3), payload("b-1", 1), T0 + 10).verdict is Verdict.DUPLICATE
    offer = demux.offer("HUB-1", part("b-1", 3, 3), payload("b-1", 3), T0 + 11)
    assert offer.verdict is Verdict.COMPLETE and offer.batch is not None
    assert sorted(offer.batch.held) == [1, 2, 3]
