"""``pyjraft demo``: the key-value demo (`pyjraft.demo.kv_demo`, with its workload
and live view) and the earlier counter walk-through (`pyjraft.demo.counter`)."""
