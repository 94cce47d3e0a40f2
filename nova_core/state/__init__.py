"""Nova's state: an embedded SQLite database under NOVA_HOME, and the project lock."""

from nova_core.state.store import Store, default_nova_home

__all__ = ["Store", "default_nova_home"]
