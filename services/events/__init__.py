"""CloudEvents in and out over NATS JetStream: the binding, event models and streams."""
