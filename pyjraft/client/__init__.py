"""pyjraft.client."""
