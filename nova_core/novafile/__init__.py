"""The NovaFile: TOML -> validated pydantic specs (and the Boltfile adapter)."""
