"""The ``fxgw`` console command."""

from gateway.cli.main import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, configure_logging, main

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_REJECTED", "configure_logging", "main"]
