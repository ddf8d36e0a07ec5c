"""profiling layer."""
