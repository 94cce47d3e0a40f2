"""Test harness for Nova and for plugin authors.

* :mod:`nova_core.testing.fakes`: compute, network, storage and device drivers
  that keep their state in memory (mirrored to a JSON file under NOVA_HOME so
  that separate ``nova`` processes share it). Faults are injected through their
  options (``fail_on``, ``crash_on``) straight from a NovaFile.
* :mod:`nova_core.testing.contracts`: ``ComputeDriverContract``,
  ``NetworkDriverContract``, ``StorageDriverContract``: subclass one in your
  plugin's tests and provide the fixtures it names to prove your driver honours
  the contract.
* :mod:`nova_core.testing.pytest_plugin`: fixtures (``nova_home``,
  ``fake_distribution``, ``nova_fake_drivers``, ``run_nova``), registered with
  pytest automatically when nova-core is installed.
* :mod:`nova_core.testing.cleanup`: ``remove_run_folders(home)``, which removes the
  folders drivers keep on /run for a NOVA_HOME (no pytest needed, for benchmarks).
"""
