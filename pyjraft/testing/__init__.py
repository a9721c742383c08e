"""pyjraft.testing."""
