"""The federation's Avro contract: schema loading, canonical form, fingerprints, encoding and
decoding, JSON conversion and compatibility checks. Pure."""
