"""pyjraft.transport."""
