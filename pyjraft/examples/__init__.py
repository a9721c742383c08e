"""pyjraft.examples: small applications built only on the public API (see `counter`)."""
