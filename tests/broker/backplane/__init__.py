"""The backplanes: one behavioural suite over both, then Redis-only and multi-process behaviour."""
