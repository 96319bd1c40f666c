"""Connection admission (gateway/broker/admission.py): the limits, and eviction of idle pending connections."""

from __future__ import annotations

from gateway.broker.admission import PENDING_LIMIT, SOURCE_LIMIT, TOTAL_LIMIT, ConnectionAdmission, Ticket


def admission(total: int = 10, pending: int = 10, per_source: int = 10) -> ConnectionAdmission:
    return ConnectionAdmission(max_total=total, max_pending=pending, max_per_source=per_source,
                               unlimited=["127.0.0.1"])


def admit(adm: ConnectionAdmission, source: str, closed: list[str] | None = None) -> tuple[Ticket | None, str, int]:
    return adm.admit(source, lambda: (closed if closed is not None else []).append(source))


def test_a_source_over_its_limit_is_refused_and_others_are_not() -> None:
    adm = admission(per_source=2)
    assert admit(adm, "10.0.0.5")[0] and admit(adm, "10.0.0.5")[0]
    assert admit(adm, "10.0.0.5") == (None, SOURCE_LIMIT, 0)
    assert admit(adm, "10.0.0.6")[0] is not None
    # the unlimited source is not held to it
    assert all(admit(adm, "127.0.0.1")[0] is not None for _ in range(5))


def test_release_gives_the_slot_back_once() -> None:
    adm = admission(per_source=1)
    ticket, _, _ = admit(adm, "10.0.0.5")
    assert ticket is not None
    adm.release(ticket)
    adm.release(ticket)  # a second release changes nothing
    assert (adm.total, adm.pending) == (0, 0)
    assert admit(adm, "10.0.0.5")[0] is not None


def test_pending_full_evicts_the_oldest_connection_still_without_its_connect() -> None:
    adm = admission(pending=2)
    closed: list[str] = []
    first, _, _ = admit(adm, "10.0.0.1", closed)
    second, _, _ = admit(adm, "10.0.0.2", closed)
    assert first is not None and second is not None
    adm.connect_read(first)  # its CONNECT arrived (its password is being checked): not evicted
    third, _, evicted = admit(adm, "10.0.0.3", closed)
    assert third is not None and evicted == 1 and closed == ["10.0.0.2"] and second.released
    # Both pending ones have sent their CONNECT now: nothing to evict, the newcomer is refused.
    adm.connect_read(third)
    assert admit(adm, "10.0.0.4", closed) == (None, PENDING_LIMIT, 0)
    adm.logged_in(first)
    assert (adm.total, adm.pending) == (2, 1)
    assert admit(adm, "10.0.0.4", closed)[0] is not None


def test_total_full_of_logged_in_connections_refuses() -> None:
    adm = admission(total=2)
    for source in ("10.0.0.1", "10.0.0.2"):
        ticket, _, _ = admit(adm, source)
        assert ticket is not None
        adm.logged_in(ticket)
    assert admit(adm, "10.0.0.3") == (None, TOTAL_LIMIT, 0)
