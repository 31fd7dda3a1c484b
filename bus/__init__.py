"""The swarm's wire: event schemas, subjects, stream setup, publishing and the embedded nats-server."""

from bus.client import (
    BusConfig,
    StreamSpec,
    connect,
    ensure_consumer,
    ensure_stream,
    ledger_consumer_config,
    publish,
    publish_many,
    setup,
    work_consumer_config,
)
from bus.errors import BusError, PublishError, ServerStartError, StreamConfigConflict
from bus.server import EmbeddedServer, nats_server_binary

__all__ = [
    "BusConfig",
    "BusError",
    "EmbeddedServer",
    "PublishError",
    "ServerStartError",
    "StreamConfigConflict",
    "StreamSpec",
    "connect",
    "ensure_consumer",
    "ensure_stream",
    "ledger_consumer_config",
    "nats_server_binary",
    "publish",
    "publish_many",
    "setup",
    "work_consumer_config",
]
