"""The kombu 5.7.0 internals the ownership part of workers/transport.py (issue 18) relies on,
beyond those tests/unit/test_pinned_internals.py pins: if an upgrade changes one of them,
this fails and says what to re-check.

- ReliableQoS replaces redis `QoS.ack/reject/_remove_from_indices` (acks check ownership)
  and calls virtual `QoS.append/ack` directly; kombu's `restore_unacked` (channel close)
  goes through `restore_by_tag`, which ReliableQoS makes ownership-aware.
- Consumption is gated by `QoS.can_consume`, which the poller checks before each fetch
  (`on_poll_start`); the sweep runs from `maybe_restore_messages` / `on_poll_init`.
- Acks must check ownership because a message keeps its delivery tag when restored: the
  tag is set once at publish (`_inplace_augment_message`) and `_do_restore_message`
  (pinned there) pushes the payload back unchanged.
- The heartbeat's own client is built from `Channel._connparams()`.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import kombu
from kombu.transport import redis as kredis
from kombu.transport import virtual as kvirtual
from kombu.transport.virtual import base

KOMBU_5_7_0: dict[str, tuple[Callable[..., Any], str]] = {
    "redis.QoS.ack": (kredis.QoS.ack, "1bc15a4ddf541af6"),
    "redis.QoS.reject": (kredis.QoS.reject, "747a02434344d1a6"),
    "redis.QoS._remove_from_indices": (kredis.QoS._remove_from_indices, "980a109d54ad9136"),
    "redis.QoS.restore_unacked": (kredis.QoS.restore_unacked, "8954efef014d546e"),
    "redis.MultiChannelPoller.maybe_restore_messages": (
        kredis.MultiChannelPoller.maybe_restore_messages, "6c267815d521a4a6"),
    "redis.MultiChannelPoller.on_poll_init": (
        kredis.MultiChannelPoller.on_poll_init, "0a605e782492713d"),
    "redis.MultiChannelPoller.on_poll_start": (
        kredis.MultiChannelPoller.on_poll_start, "414f76caaa675bc0"),
    "redis.Channel._connparams": (kredis.Channel._connparams, "e9a4295085a8fb90"),
    "virtual.QoS.can_consume": (kvirtual.QoS.can_consume, "787f80092f8d7e51"),
    "virtual.QoS.append": (kvirtual.QoS.append, "b388f0cd6485c28a"),
    "virtual.QoS.ack": (kvirtual.QoS.ack, "0714292b916fecb2"),
    "virtual.QoS.restore_unacked_once": (kvirtual.QoS.restore_unacked_once,
                                         "c81f3d0fb29b9599"),
    "virtual.Channel._inplace_augment_message": (base.Channel._inplace_augment_message,
                                                 "3a07d99062fc5824"),
    "virtual.Channel.basic_consume": (base.Channel.basic_consume, "0fec962694938b61"),
}


def fingerprint(fn: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


def test_kombu_internals_the_ownership_relies_on_are_unchanged() -> None:
    changed = sorted(name for name, (fn, pinned) in KOMBU_5_7_0.items()
                     if fingerprint(fn) != pinned)
    assert not changed, (
        f"kombu {kombu.__version__} changed {changed}: re-read them against "
        "workers/transport.py's ReliableQoS (ack/reject/restore_by_tag ownership checks, "
        "can_consume gate, the sweep in restore_visible), then update KOMBU_5_7_0 here.")


def test_delivery_tag_is_set_at_publish_and_kept_on_restore() -> None:
    assert "delivery_tag=self._next_delivery_tag()" in inspect.getsource(
        base.Channel._inplace_augment_message)
    assert "dumps(payload)" in inspect.getsource(kredis.Channel._do_restore_message)


def test_the_poller_gates_each_fetch_on_can_consume() -> None:
    assert "channel.qos.can_consume()" in inspect.getsource(
        kredis.MultiChannelPoller.on_poll_start)
    assert "restore_visible" in inspect.getsource(
        kredis.MultiChannelPoller.maybe_restore_messages)
