"""Nova plugin: an encrypted overlay network over QUIC"""

__version__ = "0.1.0"
