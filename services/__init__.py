"""The rlimpact services; each subpackage runs as its own process (``python -m services.X``)."""
