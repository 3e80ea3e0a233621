"""Session memory: L1 in-process pool, L2 Redis checkpoint + turn buffer, SQL spill, L3 long-term vectors."""
