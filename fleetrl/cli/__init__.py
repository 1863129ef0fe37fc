"""The ``fleetrl`` command: ``main`` is the console script's entry point."""

from fleetrl.cli.main import main

__all__ = ["main"]
