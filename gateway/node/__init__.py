"""The node shell: config, Kafka transport, sinks, journals, and the runtime that owns the loops."""
