"""pyjraft.examples."""
