"""Nova plugin: virtual machines on QEMU (QMP) and libvirt"""

__version__ = "0.1.0"
