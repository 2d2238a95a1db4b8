"""Every concrete I/O: the in-memory and Redis stores, the JSONL decision log."""
