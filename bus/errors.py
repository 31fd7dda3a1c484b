"""Errors of the bus package. Each message says what was wrong and what to do."""

from __future__ import annotations


class BusError(Exception):
    """Base class of bus errors."""


class ServerStartError(BusError):
    """The embedded nats-server did not start (its fatal log line is in the message)."""


class StreamConfigConflict(BusError):
    """An existing stream or consumer has a configuration that differs from what this code needs."""


class PublishError(BusError):
    """A publish was not acknowledged by JetStream as stored in the expected stream."""
