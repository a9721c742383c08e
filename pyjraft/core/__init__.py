"""The pure, sans-IO Raft core."""
