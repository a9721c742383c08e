"""pyjraft: Raft consensus for Python."""
