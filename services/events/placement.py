"""Where JetStream puts a stream: its replica count, and the server's refusals turned into words.

A stream, KV bucket or object store gets ``nats.replicas`` copies on as many servers of a
cluster. nats-server refuses what it cannot place (no cluster, too few servers, no room to
reserve ``max_bytes``); :func:`refusing_placement` says which, and what setting to change.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from nats.js import JetStreamContext
from nats.js.errors import APIError

from services.events.errors import EventsError

log = logging.getLogger(__name__)


class NotProvisionedError(EventsError, RuntimeError):
    """A stream listenpost needs is missing (and this identity may not create it), or cannot be made."""


#: JetStream's "insufficient storage resources available" (a stream's max_bytes cannot be reserved).
_INSUFFICIENT_RESOURCES = 10047


async def converge_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """A bucket made before ``nats.replicas`` changed gets the new count (nats-server moves the
    data itself); buckets are otherwise only bound, never reconfigured."""
    info = await js.stream_info(stream)
    if info.config.num_replicas != replicas:
        await js.update_stream(info.config.evolve(num_replicas=replicas))
        log.info("stream %s: %d replicas, was %d", stream, replicas, info.config.num_replicas)


#: JetStream's "replicas > 1 not supported in non-clustered mode".
_NOT_CLUSTERED = 10074
#: JetStream's "no suitable peers for placement": fewer servers than replicas.
_NO_PEERS = 10005


@contextlib.contextmanager
def refusing_placement(what: str, replicas: int, max_bytes: int | None = None) -> Iterator[None]:
    """JetStream's refusals to place ``what`` turned into one sentence saying what to change."""
    try:
        yield
    except APIError as exc:
        if exc.err_code == _NOT_CLUSTERED:
            raise NotProvisionedError(
                f"{what} cannot have {replicas} replicas (nats.replicas): the NATS server is not clustered, "
                "JetStream runs on one server; set LISTENPOST_NATS__REPLICAS=1, or connect to a cluster of "
                f"at least {replicas} servers"
            ) from exc
        if exc.err_code == _NO_PEERS:
            raise NotProvisionedError(
                f"{what} cannot have {replicas} replicas (nats.replicas): the NATS cluster has fewer than "
                f"{replicas} JetStream servers to hold them; lower LISTENPOST_NATS__REPLICAS or add servers"
            ) from exc
        if exc.err_code == _INSUFFICIENT_RESOURCES:
            # nats-server reserves a stream's max_bytes on disk when it is made.
            raise NotProvisionedError(
                f"{what} cannot be made: nats-server has no room to reserve its "
                f"{max_bytes or 0:,} bytes (max_bytes) in its store; lower the stream's limit "
                "(LISTENPOST_NATS__*_MAX_BYTES) or give JetStream more storage"
            ) from exc
        raise
