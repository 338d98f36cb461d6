"""Receivers: one module per type, each with its config model, its payload and its ``send``.

Every receiver module exports a pydantic config model (``type`` a Literal naming it) and an
``async def send(notification, config, secrets, client) -> Delivery`` that makes one attempt
and raises :class:`DeliveryError` (``retryable``, ``retry_after_s``) when it fails; retries,
queueing and dead-lettering are the sender's job, not the receiver's.
"""
