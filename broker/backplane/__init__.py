"""Backplanes: where channel streams live (see ``broker.backplane.base``)."""

from broker.backplane.base import (
    Backplane,
    BackplaneEvent,
    BackplaneUnavailable,
    ChannelHead,
    Head,
    LivePublication,
    Page,
    RemoteAnnouncement,
)
from broker.backplane.memory import MemoryBackplane
from broker.settings import BackplaneKind, Settings


def create_backplane(settings: Settings) -> Backplane:
    """The backplane ``settings.backplane.kind`` names."""
    if settings.backplane.kind is BackplaneKind.REDIS:
        from broker.backplane.redis import RedisBackplane

        return RedisBackplane(settings.backplane)
    return MemoryBackplane(settings)


__all__ = [
    "Backplane",
    "BackplaneEvent",
    "BackplaneUnavailable",
    "ChannelHead",
    "Head",
    "LivePublication",
    "MemoryBackplane",
    "Page",
    "RemoteAnnouncement",
    "create_backplane",
]
