"""Keys, the signed trust list, sealed envelopes and signed receipts. Pure."""
