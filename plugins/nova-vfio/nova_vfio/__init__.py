"""Nova plugin: PCI, GPU passthrough and SR-IOV devices"""

__version__ = "0.1.0"
