"""pytest fixtures for Nova and its plugins (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nova_core.testing.cleanup import remove_run_folders

__all__ = ["remove_run_folders"]  # also importable from here, as before

FAKE_DRIVERS = {
    "nova_core.compute": {"fake": "nova_core.testing.fakes:FakeComputeDriver"},
    "nova_core.network": {"fake": "nova_core.testing.fakes:FakeNetworkDriver"},
    "nova_core.storage": {"fake": "nova_core.testing.fakes:FakeStorageDriver"},
    "nova_core.device": {"fake": "nova_core.testing.fakes:FakeDeviceDriver"},
}

FakeDistribution = Callable[..., Path]


def pytest_configure(config: pytest.Config) -> None:
    """Commands that tests run start no warm helper (nova_core.warm): a helper outlives
    the command, and tests leave no process behind. Tests of the helper turn it on."""
    os.environ["NOVA_WARM"] = "0"


@pytest.fixture
def nova_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh NOVA_HOME for this test (also exported for subprocesses).

    Afterwards the host-wide folders drivers keep for it (``/run/nova-*HASH``: runtime
    state, locks, sockets) are removed, so tests leave no folder behind on /run.
    """
    home = tmp_path / "nova-home"
    monkeypatch.setenv("NOVA_HOME", str(home))
    yield home
    remove_run_folders(home)


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDistribution]:
    """Install test-only distributions: a ``.dist-info`` (and modules) on sys.path and PYTHONPATH.

    ``make(name, entry_points={group: {ep_name: "module:attr"}}, modules={"mod": "source"},
    version="1.0")`` returns the folder it put on the path. The plugin registry
    cache is cleared before and after.
    """
    from nova_core.plugins import get_registry

    counter = iter(range(1000))

    def make(name: str, entry_points: dict[str, dict[str, str]],
             modules: dict[str, str] | None = None, version: str = "1.0") -> Path:
        root = tmp_path / f"site-{next(counter)}-{name}"
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines.extend(f"{ep} = {target}" for ep, target in eps.items())
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in (modules or {}).items():
            (root / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(root))
        path = os.environ.get("PYTHONPATH", "")
        monkeypatch.setenv("PYTHONPATH", str(root) + (os.pathsep + path if path else ""))
        get_registry.cache_clear()
        return root

    get_registry.cache_clear()
    yield make
    get_registry.cache_clear()


@pytest.fixture
def nova_fake_drivers(fake_distribution: FakeDistribution) -> Path:
    """Make the fake drivers available under the name ``fake`` for every kind."""
    return fake_distribution("nova-fake-drivers", FAKE_DRIVERS)


@pytest.fixture
def run_nova(nova_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``nova`` CLI in a subprocess: ``run_nova("up", cwd=folder)``.

    Inherits NOVA_HOME and PYTHONPATH from the test's environment.
    """

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ)
        full_env.update(env or {})
        done = subprocess.run([sys.executable, "-m", "nova_core.cli.main", *args], cwd=cwd,
                              env=full_env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"nova {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    return run
