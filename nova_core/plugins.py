"""Plugin discovery and loading.

Two mechanisms, one job each (see docs/architecture.md):

* named drivers are entry points in ``nova_core.compute|network|storage|device``;
  the entry-point name is the driver's name. Only the selected driver is
  imported, through stevedore's :class:`~stevedore.driver.DriverManager`.
* fan-out hooks are pluggy plugins in the group ``nova_core.plugins``.

Discovery reads :mod:`importlib.metadata` once per :class:`PluginRegistry`, so
every entry point is known together with the distribution that declares it:
that is what lets errors name the package to install, the one that broke, or
the two that clash. Nothing here runs at import time; build a registry with
:func:`get_registry` (cached) or :class:`PluginRegistry` (fresh, for tests).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nova_core.drivers.models import DriverKind
from nova_core.errors import DriverConflict, DriverLoadError, DriverNotFound

if TYPE_CHECKING:
    import pluggy

    from nova_core.drivers.base import Driver, DriverContext

PLUGIN_GROUP = "nova_core.plugins"
DRIVER_GROUPS = {kind.group: kind for kind in DriverKind}

#: Which first-party distribution provides which driver: used only to tell a user
#: what to install when a driver is absent. Third-party drivers are found by
#: their entry points alone and need no line here.
KNOWN_PROVIDERS: dict[tuple[DriverKind, str], str] = {
    (DriverKind.COMPUTE, "qemu"): "nova-qemu",
    (DriverKind.COMPUTE, "libvirt"): "nova-qemu",
    (DriverKind.COMPUTE, "cloud-hypervisor"): "nova-qemu",  # planned, not built yet
    (DriverKind.COMPUTE, "capsule"): "nova-capsule",
    (DriverKind.NETWORK, "bridge"): "nova-bridge",
    (DriverKind.NETWORK, "vxlan"): "nova-bridge",
    (DriverKind.NETWORK, "quic"): "nova-quic",
    (DriverKind.NETWORK, "sriov"): "nova-vfio",
    (DriverKind.DEVICE, "vfio"): "nova-vfio",
    (DriverKind.DEVICE, "sriov"): "nova-vfio",
    (DriverKind.STORAGE, "local"): "nova-core",
}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def disabled_from_env(environ: dict[str, str] | None = None) -> frozenset[str]:
    """Parse ``NOVA_DISABLE_PLUGINS=name,...`` (distribution or plugin names)."""
    raw = (environ if environ is not None else os.environ).get("NOVA_DISABLE_PLUGINS", "")
    return frozenset(_normalise(part.strip()) for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class EntryPointRecord:
    """One entry point together with the distribution that declares it."""

    group: str
    name: str
    value: str
    dist: str
    version: str
    entry_point: importlib.metadata.EntryPoint = field(compare=False, repr=False)

    @property
    def origin(self) -> str:
        """``dist version``, for messages."""
        return f"{self.dist} {self.version}"


@dataclass
class PluginDistribution:
    """What ``nova plugins ls`` shows for one distribution."""

    name: str
    version: str
    drivers: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    disabled: bool = False
    loaded: bool = True
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "version": self.version,
            "drivers": self.drivers,
            "hooks": self.hooks,
            "disabled": self.disabled,
            "loaded": self.loaded,
            "errors": self.errors,
        }


def _warn_to_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class PluginRegistry:
    """Finds and loads drivers and hook plugins; one per process (or per test).

    :param disabled: distribution or plugin names to ignore; defaults to
        ``NOVA_DISABLE_PLUGINS``.
    :param warn: where warnings go (stderr by default); each is given once.
    """

    def __init__(
        self,
        disabled: Iterable[str] | None = None,
        warn: Callable[[str], None] = _warn_to_stderr,
    ) -> None:
        self.disabled = (
            frozenset(_normalise(d) for d in disabled) if disabled is not None
            else disabled_from_env()
        )
        self._warn_sink = warn
        self._warned: set[str] = set()
        self._records: dict[str, list[EntryPointRecord]] | None = None
        self._classes: dict[tuple[DriverKind, str], type[Driver]] = {}
        self._instances: dict[tuple[DriverKind, str, str], Driver] = {}
        self._hook_manager: pluggy.PluginManager | None = None
        self._hook_errors: dict[str, str] = {}

    # -- discovery -----------------------------------------------------------------
    def warn(self, message: str) -> None:
        """Emit ``message`` once."""
        if message not in self._warned:
            self._warned.add(message)
            self._warn_sink(message)

    def records(self, group: str) -> list[EntryPointRecord]:
        """Every entry point of ``group`` from every installed distribution."""
        if self._records is None:
            self._records = self._scan()
        return self._records.get(group, [])

    def _scan(self) -> dict[str, list[EntryPointRecord]]:
        return scan_entry_points()

    def is_disabled(self, record: EntryPointRecord) -> bool:
        """True if NOVA_DISABLE_PLUGINS names the record's distribution or plugin."""
        return _normalise(record.dist) in self.disabled or (
            record.group == PLUGIN_GROUP and _normalise(record.name) in self.disabled
        )

    def driver_names(self, kind: DriverKind) -> list[str]:
        """Names of the enabled drivers of ``kind``, sorted."""
        return sorted({r.name for r in self.records(kind.group) if not self.is_disabled(r)})

    # -- drivers ------------------------------------------------------------------
    def resolve(self, kind: DriverKind, name: str) -> EntryPointRecord:
        """Find the one entry point for driver ``name``, or raise a helpful error."""
        candidates = [r for r in self.records(kind.group) if r.name == name]
        enabled = [r for r in candidates if not self.is_disabled(r)]
        if len(enabled) > 1:
            origins = " and ".join(r.origin for r in enabled)
            raise DriverConflict(
                f"{kind.value} driver '{name}' is provided by more than one distribution: "
                f"{origins}.",
                hint="uninstall one of them, or disable one with "
                f"NOVA_DISABLE_PLUGINS={enabled[-1].dist}",
            )
        if enabled:
            return enabled[0]
        if candidates:
            raise DriverNotFound(
                f"{kind.value} driver '{name}' is provided by {candidates[0].dist}, "
                "which is disabled by NOVA_DISABLE_PLUGINS.",
                hint=f"remove {candidates[0].dist} from NOVA_DISABLE_PLUGINS to use it",
            )
        raise DriverNotFound(self.absent_message(kind, name), hint=self._absent_hint(kind, name))

    def absent_message(self, kind: DriverKind, name: str) -> str:
        """Why driver ``name`` is absent, naming the package that would provide it."""
        available = ", ".join(self.driver_names(kind)) or "none"
        provider = KNOWN_PROVIDERS.get((kind, name))
        if provider is None:
            return f"no {kind.value} driver '{name}' (available: {available})"
        installed = self.installed_version(provider)
        if installed:
            return (
                f"no {kind.value} driver '{name}': {provider} {installed} is installed "
                f"but does not provide it (available: {available})"
            )
        return f"no {kind.value} driver '{name}'; install {provider} (available: {available})"

    def _absent_hint(self, kind: DriverKind, name: str) -> str:
        provider = KNOWN_PROVIDERS.get((kind, name))
        if provider is None:
            return "check the driver name, or install the package that provides it"
        if self.installed_version(provider):
            return f"upgrade {provider} to a version that provides the '{name}' driver"
        return f"pip install {provider}  (or plugins/{provider} from the Nova repository)"

    def installed_version(self, dist: str) -> str | None:
        """Version of an installed distribution, None if it is not installed."""
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    def driver_class(self, kind: DriverKind, name: str) -> type[Driver]:
        """Import (once) and return the class of driver ``name`` of ``kind``."""
        key = (kind, name)
        if key not in self._classes:
            record = self.resolve(kind, name)
            self._classes[key] = self._load_driver(kind, record)
        return self._classes[key]

    def _load_driver(self, kind: DriverKind, record: EntryPointRecord) -> type[Driver]:
        from stevedore.driver import DriverManager

        from nova_core.drivers import BASE_CLASS

        def failed(_manager: object, _ep: object, error: Exception) -> None:
            raise DriverLoadError(
                f"{kind.value} driver '{record.name}' from {record.origin} failed to load: "
                f"{type(error).__name__}: {error}",
                hint=f"reinstall {record.dist}, or run with --debug to see the traceback",
            ) from error

        class _ResolvedDriverManager(DriverManager):
            """Loads exactly the entry point discovery resolved (no cache, no rescan)."""

            def list_entry_points(self) -> list[importlib.metadata.EntryPoint]:
                return [record.entry_point]

        manager = _ResolvedDriverManager(
            namespace=kind.group, name=record.name, on_load_failure_callback=failed
        )
        cls = manager.driver
        base = BASE_CLASS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise DriverLoadError(
                f"{kind.value} driver '{record.name}' from {record.origin} is not a "
                f"{base.__name__} (entry point {record.value})",
                hint=f"report this to the authors of {record.dist}",
            )
        return cls

    def driver(self, kind: DriverKind, name: str, context: DriverContext) -> Driver:
        """Return a driver instance (one per kind, name and NOVA_HOME)."""
        key = (kind, name, str(context.nova_home))
        if key not in self._instances:
            self._instances[key] = self.driver_class(kind, name)(name, context)
        return self._instances[key]

    def try_driver_class(self, kind: DriverKind, name: str) -> type[Driver] | None:
        """Like :meth:`driver_class` but returns None when the driver is absent.

        A broken driver still raises: a failing import is never disguised as absence.
        """
        try:
            return self.driver_class(kind, name)
        except DriverNotFound:
            return None

    def all_driver_classes(self, kind: DriverKind) -> dict[str, type[Driver]]:
        """Load every enabled driver of ``kind``; broken ones are skipped with a warning."""
        result: dict[str, type[Driver]] = {}
        for name in self.driver_names(kind):
            try:
                result[name] = self.driver_class(kind, name)
            except (DriverLoadError, DriverConflict) as error:
                self.warn(error.message)
        return result

    def preload(self) -> bool:
        """Build what commands ask of the registry first: the hook manager and the classes
        of the drivers whose modules are imported already (each warmed up: see
        :meth:`Driver.warm_up`), so that the children a warm helper forks
        (:mod:`nova_core.warm`) inherit them instead of each building them again
        (5-10 ms). False when that gave a warning: a child would not repeat it, so
        such a registry must not be shared."""
        self.hooks  # noqa: B018 - built for its side effect
        for kind in DriverKind:
            for name in self.driver_names(kind):
                try:
                    if self.resolve(kind, name).value.partition(":")[0] not in sys.modules:
                        continue
                    driver = self.driver_class(kind, name)
                except (DriverLoadError, DriverConflict, DriverNotFound):
                    return False
                try:
                    driver.warm_up()
                except Exception:  # noqa: BLE001 - a child computes it again itself
                    pass
        return not self._warned

    # -- hooks --------------------------------------------------------------------
    @property
    def hooks(self) -> pluggy.PluginManager:
        """The pluggy manager with every enabled hook plugin registered.

        A plugin that fails to import gives one warning and is skipped.
        """
        if self._hook_manager is None:
            import pluggy

            from nova_core import hookspecs

            manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            manager.add_hookspecs(hookspecs)
            for record in self.records(PLUGIN_GROUP):
                if self.is_disabled(record):
                    continue
                try:
                    manager.register(record.entry_point.load(), name=f"{record.dist}:{record.name}")
                except Exception as error:  # noqa: BLE001 - any import failure is reported
                    message = (
                        f"plugin '{record.name}' from {record.origin} failed to load "
                        f"({type(error).__name__}: {error}); its hooks are skipped"
                    )
                    self._hook_errors[record.dist] = message
                    self.warn(message)
            self._hook_manager = manager
        return self._hook_manager

    def call_hook_safely(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook; an implementation that raises gives a warning, the others still run."""
        results: list[Any] = []
        caller = getattr(self.hooks.hook, hook_name)
        for impl in caller.get_hookimpls():
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as error:  # noqa: BLE001 - a plugin's bug must not stop Nova
                self.warn(f"hook {hook_name} of {impl.plugin_name} failed: "
                          f"{type(error).__name__}: {error}")
                continue
            if result is not None:
                results.append(result)
        return results

    # -- inventory ----------------------------------------------------------------
    def distributions(self, load: bool = True) -> list[PluginDistribution]:
        """Every distribution that declares Nova entry points, for ``nova plugins ls``.

        With ``load``, each driver and hook plugin is imported to report whether it loads.
        """
        by_dist: dict[str, PluginDistribution] = {}
        groups = [PLUGIN_GROUP, *DRIVER_GROUPS]
        for group in groups:
            for record in self.records(group):
                dist = by_dist.setdefault(
                    record.dist, PluginDistribution(record.dist, record.version)
                )
                dist.disabled = self.is_disabled(record) or dist.disabled
                if group == PLUGIN_GROUP:
                    dist.hooks.append(record.name)
                else:
                    dist.drivers.append(f"{DRIVER_GROUPS[group].value}:{record.name}")
        if load:
            manager = self.hooks
            for dist in by_dist.values():
                if dist.disabled:
                    dist.loaded = False
                    continue
                if dist.name in self._hook_errors:
                    dist.errors.append(self._hook_errors[dist.name])
                for entry in dist.drivers:
                    kind_name, name = entry.split(":", 1)
                    try:
                        self.driver_class(DriverKind(kind_name), name)
                    except (DriverLoadError, DriverConflict, DriverNotFound) as error:
                        dist.errors.append(error.message)
                dist.hooks = sorted(
                    {impl.name for plugin_name, plugin in manager.list_name_plugin()
                     if plugin_name.startswith(dist.name + ":") and plugin is not None
                     for impl in manager.get_hookcallers(plugin) or []}
                ) or dist.hooks
                dist.loaded = not dist.errors
        return sorted(by_dist.values(), key=lambda d: d.name)


_SCANNED: dict[tuple[tuple[str, int], ...], dict[str, list[EntryPointRecord]]] = {}


def scan_entry_points() -> dict[str, list[EntryPointRecord]]:
    """Every Nova entry point of every installed distribution, by group.

    Kept for the process while ``sys.path`` and the mtimes of its folders stay the
    same (installing or removing a distribution changes its folder's mtime), so a
    warm helper (:mod:`nova_core.warm`) scans once for all the commands it serves.
    """
    key = tuple((entry, _mtime(entry)) for entry in sys.path)
    if key not in _SCANNED:
        _SCANNED.clear()
        _SCANNED[key] = _scan_distributions()
    return {group: list(records) for group, records in _SCANNED[key].items()}


def _mtime(path: str) -> int:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return 0


def _scan_distributions() -> dict[str, list[EntryPointRecord]]:
    found: dict[str, list[EntryPointRecord]] = {}
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        # METADATA is parsed (an email parser: ~0.5 ms a distribution) only for the
        # few that have Nova entry points; the folder name says who the others are
        ours = [ep for ep in dist.entry_points
                if ep.group == PLUGIN_GROUP or ep.group in DRIVER_GROUPS]
        quick = getattr(dist, "_normalized_name", None)
        dist_name = (dist.metadata["Name"] or "unknown") if ours or not quick else quick
        key = _normalise(dist_name)
        if key in seen:  # a shadowed copy further down sys.path
            continue
        seen.add(key)
        for ep in ours:
            found.setdefault(ep.group, []).append(
                EntryPointRecord(ep.group, ep.name, ep.value, dist_name,
                                 dist.version or "?", ep)
            )
    return found


def get_registry() -> PluginRegistry:
    """The process's registry, cached while ``NOVA_DISABLE_PLUGINS`` stays the same (a warm
    helper's child inherits the helper's, see :meth:`PluginRegistry.preload`); tests call
    ``get_registry.cache_clear()``."""
    return _registry_for(disabled_from_env())


@functools.lru_cache(maxsize=1)
def _registry_for(disabled: frozenset[str]) -> PluginRegistry:
    return PluginRegistry(disabled)


get_registry.cache_clear = _registry_for.cache_clear  # type: ignore[attr-defined]
