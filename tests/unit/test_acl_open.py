"""The open ACL (broker.acl = "open"): topics outside device/ are free; device/ topics keep the device rule."""

from __future__ import annotations

from gateway.broker.acl import Access, client_may


def test_open_mode_frees_other_topics_and_keeps_the_device_rule() -> None:
    for access in Access:
        assert client_may("myclientid", access, "TopicA/B", open_acl=True)
        assert not client_may("myclientid", access, "TopicA/B", open_acl=False)
        assert not client_may("myclientid", access, "device/AP-01/command", open_acl=True)
    assert client_may("AP-01", Access.SUBSCRIBE, "device/AP-01/command", open_acl=True)
    assert not client_may("AP-01", Access.PUBLISH, "device/AP-02/data", open_acl=True)
