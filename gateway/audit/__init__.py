"""The tamper-evident audit trail: the hash chain and checkpoints (pure), the segment store on
disk, and the status view folded from it."""
