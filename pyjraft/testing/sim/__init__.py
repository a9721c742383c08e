"""The deterministic cluster simulator."""
