"""Nova plugin: bridge networks with NAT, firewall, DHCP and DNS"""

__version__ = "0.1.0"
