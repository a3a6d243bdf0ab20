"""State points: a thermodynamic state (NVT: temperature and density; NPT: temperature and pressure),
its text form ("300K:0.787g/cm3", "300K:1bar") and lists of them (comma-separated or a TOML file).

The text and TOML formats are described in ``docs/formats.md``. Units: K, g/cm^3, bar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .files import read_config_file
from . import validation as V
from .errors import ConfigError

__all__ = ["StatePoint", "StatePointError", "parse_state_point", "parse_state_points", "load_state_points",
           "BAR_PER_ATM"]

BAR_PER_ATM = 1.01325
_T_TOL = 0.05            # K
_RHO_TOL = 5e-4          # g/cm^3
_P_TOL_REL = 1e-3


class StatePointError(ConfigError):
    """A state point (or a list or file of them) cannot be read."""


def _num(x: float) -> str:
    return f"{float(x):g}"


@dataclass(frozen=True)
class StatePoint:
    """A thermodynamic state: NVT (temperature K, density g/cm^3) or NPT (temperature K, pressure bar)."""

    temperature: float
    density: float | None = None
    pressure: float | None = None

    def __post_init__(self) -> None:
        V.temperature(self.temperature, error=StatePointError)
        if (self.density is None) == (self.pressure is None):
            raise StatePointError("a state point needs exactly one of density (NVT) or pressure (NPT)")
        if self.density is not None:
            V.density(self.density, error=StatePointError)
        V.pressure(self.pressure, error=StatePointError)

    @property
    def ensemble(self) -> str:
        return "NPT" if self.pressure is not None else "NVT"

    def label(self) -> str:
        """The canonical text form, which ``parse_state_point`` reads back: "300K:0.787g/cm3", "300K:1bar"."""
        if self.pressure is not None:
            return f"{_num(self.temperature)}K:{_num(self.pressure)}bar"
        return f"{_num(self.temperature)}K:{_num(self.density)}g/cm3"

    def title(self) -> str:
        """A human title for plots and tables: "300 K, 0.787 g/cm\u00b3 (NVT)"."""
        second = f"{_num(self.pressure)} bar" if self.pressure is not None else f"{_num(self.density)} g/cm\u00b3"
        return f"{_num(self.temperature)} K, {second} ({self.ensemble})"

    def slug(self) -> str:
        """A file-name-safe form: "300K_0.787gcm3", "300K_1bar"."""
        second = f"{_num(self.pressure)}bar" if self.pressure is not None else f"{_num(self.density)}gcm3"
        return f"{_num(self.temperature)}K_{second}"

    def to_dict(self) -> dict[str, Any]:
        """The state in the form data sets and models record it (``metadata.state``)."""
        return {"temperature_K": float(self.temperature),
                "density_g_cm3": None if self.density is None else float(self.density),
                "pressure_bar": None if self.pressure is None else float(self.pressure),
                "ensemble": self.ensemble}

    def matches(self, state: dict[str, Any] | None) -> bool:
        """Whether a recorded state (``{"temperature_K", "density_g_cm3", "pressure_bar", ...}``) is this one
        (within 0.05 K, 5e-4 g/cm^3, 0.1 % in pressure)."""
        if not state or state.get("temperature_K") is None:
            return False
        if abs(float(state["temperature_K"]) - self.temperature) > _T_TOL:
            return False
        p = state.get("pressure_bar")
        if self.pressure is not None:
            return p is not None and abs(float(p) - self.pressure) <= _P_TOL_REL * self.pressure + 1e-9
        rho = state.get("density_g_cm3")
        return p is None and rho is not None and abs(float(rho) - self.density) <= _RHO_TOL


_SYNTAX = "TEMPERATURE:DENSITY (NVT, e.g. 300K:0.787g/cm3) or TEMPERATURE:PRESSURE (NPT, e.g. 300K:1bar)"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_DENSITY_UNITS = ("g/cm3", "g/cm^3", "g/cc", "g/ml")
_PRESSURE_UNITS = {"bar": 1.0, "atm": BAR_PER_ATM}


def parse_state_point(text: str) -> StatePoint:
    """Read one state point: "300K:0.787g/cm3" (NVT) or "300K:1bar" / "300K:1atm" (NPT).

    Raises StatePointError with the accepted syntax when the text does not follow it.
    """
    raw = str(text).strip()
    parts = raw.split(":")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise StatePointError(f"state point '{raw}' does not read as {_SYNTAX}")
    t_text, v_text = parts[0].strip().replace(" ", ""), parts[1].strip().replace(" ", "")
    m = re.fullmatch(rf"({_NUMBER})(K?)", t_text, flags=re.IGNORECASE)
    if m is None:
        raise StatePointError(f"state point '{raw}': temperature '{t_text}' must be a number of kelvin such as 300K")
    if not m.group(2):
        raise StatePointError(f"state point '{raw}': temperature '{t_text}' needs its unit, e.g. {t_text}K")
    temperature = float(m.group(1))
    m = re.fullmatch(rf"({_NUMBER})(.*)", v_text)
    if m is None:
        raise StatePointError(f"state point '{raw}': '{v_text}' must be a density such as 0.787g/cm3 "
                              "or a pressure such as 1bar")
    value, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise StatePointError(f"state point '{raw}': '{v_text}' needs a unit: g/cm3 (NVT density) "
                              "or bar / atm (NPT pressure)")
    if unit in _DENSITY_UNITS:
        return StatePoint(temperature, density=value)
    if unit in _PRESSURE_UNITS:
        return StatePoint(temperature, pressure=value * _PRESSURE_UNITS[unit])
    raise StatePointError(f"state point '{raw}': unknown unit '{m.group(2)}'; use g/cm3 for a density (NVT) "
                          "or bar / atm for a pressure (NPT)")


def parse_state_points(text: str | Sequence[str | StatePoint] | StatePoint) -> list[StatePoint]:
    """State points from a comma-separated string, a TOML file path, or a list of strings/StatePoints.

    Raises StatePointError for bad syntax, an empty list or a state point given twice.
    """
    if isinstance(text, StatePoint):
        items: list[Any] = [text]
    elif isinstance(text, (str, Path)):
        s = str(text).strip()
        if s.lower().endswith(".toml") or (Path(s).is_file() and ":" not in Path(s).name):
            return load_state_points(s)
        items = [p for p in re.split(r"[,;]", s) if p.strip()]
    else:
        items = list(text)
    points = [p if isinstance(p, StatePoint) else parse_state_point(p) for p in items]
    if not points:
        raise StatePointError(f"no state points given; give a comma-separated list of {_SYNTAX}")
    seen: set[str] = set()
    for p in points:
        if p.label() in seen:
            raise StatePointError(f"state point {p.label()} is given twice")
        seen.add(p.label())
    return points


def load_state_points(path: str | Path) -> list[StatePoint]:
    """State points from a TOML file (format in ``docs/formats.md``)."""
    path = Path(path)
    data = read_config_file(path, "state-point file", StatePointError, fmt="toml")
    unknown = sorted(set(data) - {"state_points", "state_point"})
    if unknown:
        raise StatePointError(f"state-point file '{path}': unknown keys {unknown}; use 'state_points = [...]' "
                              "and/or [[state_point]] tables")
    items: list[Any] = []
    strings = data.get("state_points", [])
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise StatePointError(f"state-point file '{path}': state_points must be a list of strings such as "
                              "\"300K:1bar\"")
    items.extend(strings)
    tables = data.get("state_point", [])
    if not isinstance(tables, list):
        raise StatePointError(f"state-point file '{path}': write state points as [[state_point]] tables")
    for k, t in enumerate(tables):
        bad = sorted(set(t) - {"temperature", "density", "pressure"})
        if bad or "temperature" not in t:
            raise StatePointError(f"state-point file '{path}', [[state_point]] number {k + 1}: needs 'temperature' "
                                  f"(K) and one of 'density' (g/cm^3) or 'pressure' (bar)"
                                  + (f"; unknown keys {bad}" if bad else ""))
        try:
            items.append(StatePoint(float(t["temperature"]),
                                    density=None if t.get("density") is None else float(t["density"]),
                                    pressure=None if t.get("pressure") is None else float(t["pressure"])))
        except (TypeError, ValueError) as exc:
            raise StatePointError(f"state-point file '{path}', [[state_point]] number {k + 1}: {exc}") from None
    if not items:
        raise StatePointError(f"state-point file '{path}' holds no state points")
    return parse_state_points(items)
