"""Stage 1 training engine (sharded jit step, Orbax, grain input), reused by stages 2 and 3."""
