"""Example third-party Nova driver (see docs/writing-a-driver.md)."""
