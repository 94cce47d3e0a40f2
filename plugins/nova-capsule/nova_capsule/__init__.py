"""Nova plugin: capsules, persistent system containers on an OCI runtime"""

__version__ = "0.1.0"
