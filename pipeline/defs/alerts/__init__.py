"""Who hears about a failed run, whatever its domain."""
