"""Plan (desired vs. recorded vs. observed) and apply (through drivers, in dependency order)."""
