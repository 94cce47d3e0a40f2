"""Secret values (env values, registry credentials) and their masking.

The core never prints a secret itself. Text that comes from drivers (errors,
rendered plans) may echo one, so every such text is passed through
:func:`mask` with the secrets of the specs involved before it is printed or
recorded. Values shorter than 3 characters are not masked inside other text
(masking "1" would garble every number); the core still never prints them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "******"


def secret_values(*specs: Any) -> list[str]:
    """The secret values of ``specs`` (None entries are skipped)."""
    values: list[str] = []
    for spec in specs:
        if spec is None:
            continue
        values.extend(getattr(spec, "env", {}).values())
        values.extend(getattr(spec, "registry_auth", {}).values())
    return values


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (3 characters or more) with a mask."""
    for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
