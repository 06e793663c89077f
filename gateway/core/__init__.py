"""The sans-I/O cores: routing, the outbound core (plain event in, envelopes out) and the
inbound core (envelope bytes in, a delivery or a rejection out). Pure."""
