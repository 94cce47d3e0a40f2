"""Facts about the host, read without changing it."""
