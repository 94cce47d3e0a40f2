"""Nova core: the driver contract, NovaFile, state, engine and the ``nova`` CLI.

Kept import-light on purpose: ``nova --version`` and ``nova ls`` import this
package, so nothing heavy (pydantic, stevedore, drivers) is imported here.
"""

__version__ = "0.1.0"
