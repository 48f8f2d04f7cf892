"""The knobs of a lab a trainer may turn (`IIA_LAB_*`), apart from the lab itself: the
supervisor and every zone process read them without importing the in-process `harness.lab`
(and through it the whole product)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import HarnessError
from harness.paths import fixtures_dir

__all__ = ["LabSettings"]


@dataclass
class LabSettings:
    """Knobs a trainer may turn, from arguments or `IIA_LAB_*` environment variables."""

    fixtures: Path = field(default_factory=fixtures_dir)
    svid_ttl: float = 300.0
    spiffe_key_rotation: float = 3600.0
    secret_grace_seconds: float = 30.0
    obo_ttl: int = 900  # lifetime of the on-behalf-of tokens token exchange mints, <= 1 h
    start_timeout: float = 5.0
    clock: Callable[[], float] = time.time

    _ENV: ClassVar[dict[str, str]] = {
        "svid_ttl": "IIA_LAB_SVID_TTL",
        "spiffe_key_rotation": "IIA_LAB_SPIFFE_KEY_ROTATION",
        "secret_grace_seconds": "IIA_LAB_SECRET_GRACE",
        "obo_ttl": "IIA_LAB_OBO_TTL",
    }
    MAX_OBO_TTL: ClassVar[int] = 3600

    def __post_init__(self) -> None:
        if isinstance(self.obo_ttl, bool) or not isinstance(self.obo_ttl, int) \
                or not 0 < self.obo_ttl <= self.MAX_OBO_TTL:
            raise HarnessError(f"the OBO token lifetime (IIA_LAB_OBO_TTL) must be a whole "
                               f"number of seconds in 1..{self.MAX_OBO_TTL}, got "
                               f"{self.obo_ttl!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LabSettings:
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, var in cls._ENV.items():
            if source.get(var):
                try:
                    values[name] = float(source[var])
                except ValueError as exc:
                    raise HarnessError(f"{var} must be a number of seconds, "
                                       f"got {source[var]!r}") from exc
                if values[name] < 0 or (name != "secret_grace_seconds" and values[name] == 0):
                    raise HarnessError(f"{var} must be positive, got {source[var]!r}")
                if name == "obo_ttl":
                    if values[name] > cls.MAX_OBO_TTL or not values[name].is_integer():
                        raise HarnessError(f"{var} must be a whole number of seconds, at most "
                                           f"{cls.MAX_OBO_TTL}, got {source[var]!r}")
                    values[name] = int(values[name])
        return cls(**{**values, **overrides})
