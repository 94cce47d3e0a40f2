"""What nova-core itself plugs in: its hooks and the ``local`` storage driver."""
