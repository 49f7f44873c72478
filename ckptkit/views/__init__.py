"""Layer 3, ways of looking at a checkpoint's tree: named sections, key matching, JSON-able values."""
