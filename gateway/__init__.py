"""fxgw: the secure event-exchange gateway node for firearm seizure and trace data."""

__version__ = "0.1.0"
