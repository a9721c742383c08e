"""pyjraft.node."""
