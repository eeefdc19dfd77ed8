"""Sequential detectors and anytime-valid intervals (pure numpy and scipy; no rules, no I/O)."""
