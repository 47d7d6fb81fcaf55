"""Dataset converters (one per official release format) and the synthetic demo world."""
