"""Range checks shared by every run configuration, so that the same quantity obeys the same rule in every
command and in the Python API (OpenMM units: K, bar, g/cm^3, nm, ps).

Each check returns the value (as float or int) or raises :class:`~openmm_cgnn.errors.ConfigError` with a
one-line message that names the field, the allowed range and the value given. ``field`` is the name of
the configuration field, which the command line translates into its option (``production`` -> ``--ns``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import ConfigError

MAX_TEMPERATURE_K = 10000.0     # far above any liquid; catches unit slips (e.g. Celsius offsets typed twice)
MAX_PRESSURE_BAR = 1.0e5        # 10 GPa
MAX_DENSITY_G_CM3 = 3.0         # no molecular liquid is denser
MAX_TIMESTEP_PS = 1.0           # the API takes ps: a larger value is almost surely fs given as ps
MAX_SEED = 2**31 - 1            # OpenMM's random seeds are C ints


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number(value: Any, field: str, unit: str = "", error: type[ConfigError] = ConfigError) -> float:
    """``value`` as a finite float; ``error`` if it is not a number or is NaN or infinite."""
    if not _is_number(value) or not math.isfinite(float(value)):
        raise error(f"{field} must be a finite number{_in(unit)}, got {value!r}", field)
    return float(value)


def in_range(value: Any, field: str, low: float | None = None, high: float | None = None, unit: str = "",
             low_open: bool = True, high_open: bool = False, error: type[ConfigError] = ConfigError) -> float:
    """A finite number in the interval from ``low`` to ``high`` (open or closed ends as given)."""
    v = number(value, field, unit, error)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if too_low or too_high:
        raise error(f"{field} must be {_interval(low, high, low_open, high_open)}{_in(unit)}, got {value!r}", field)
    return v


def positive(value: Any, field: str, unit: str = "", error: type[ConfigError] = ConfigError) -> float:
    return in_range(value, field, 0.0, None, unit, error=error)


def non_negative(value: Any, field: str, unit: str = "", error: type[ConfigError] = ConfigError) -> float:
    return in_range(value, field, 0.0, None, unit, low_open=False, error=error)


def integer(value: Any, field: str, minimum: int | None = None, maximum: int | None = None,
            error: type[ConfigError] = ConfigError) -> int:
    """An integer (not a bool, not a float) between ``minimum`` and ``maximum`` inclusive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{field} must be a whole number, got {value!r}", field)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise error(f"{field} must be {_interval(minimum, maximum, False, False)}, got {value!r}", field)
    return int(value)


# -- physical quantities: one rule each ---------------------------------------------------------------

def temperature(value: Any, field: str = "temperature", error: type[ConfigError] = ConfigError) -> float:
    if not (_is_number(value) and 0.0 < float(value) <= MAX_TEMPERATURE_K):
        raise error(f"{field} must be a positive number of kelvin, at most {MAX_TEMPERATURE_K:g} K, got {value!r}",
                    field)
    return float(value)


def pressure(value: Any, field: str = "pressure", error: type[ConfigError] = ConfigError) -> float | None:
    """None (NVT) or a pressure in (0, 1e5] bar (NPT with a Monte Carlo barostat)."""
    if value is None:
        return None
    if not (_is_number(value) and 0.0 < float(value) <= MAX_PRESSURE_BAR):
        raise error(f"{field} must be positive (bar), at most {MAX_PRESSURE_BAR:g} bar, got {value!r}; "
                    "leave it out for NVT", field)
    return float(value)


def density(value: Any, field: str = "density", error: type[ConfigError] = ConfigError) -> float:
    """A liquid density in (0, 3) g/cm^3."""
    if not (_is_number(value) and 0.0 < float(value) < MAX_DENSITY_G_CM3):
        raise error(f"{field} {value!r} g/cm^3 is not a liquid density; give a value in (0, {MAX_DENSITY_G_CM3:g})",
                    field)
    return float(value)


def timestep(value: Any, field: str = "timestep", error: type[ConfigError] = ConfigError) -> float:
    return in_range(value, field, 0.0, MAX_TIMESTEP_PS, "ps", error=error)


def cutoff(value: Any, field: str = "cutoff", error: type[ConfigError] = ConfigError) -> float:
    return positive(value, field, "nm", error=error)


def seed(value: Any, field: str = "seed", error: type[ConfigError] = ConfigError) -> int:
    return integer(value, field, 0, MAX_SEED, error=error)


def frame_schedule(timestep_ps: Any, equilibration: Any, production: Any, frame_interval: Any, prefix: str = "",
                   error: type[ConfigError] = ConfigError) -> None:
    """The time step, equilibration, production and frame interval (ps) of a run: each in range, at
    least one step per frame and at least one frame in the production run."""
    dt = timestep(timestep_ps, prefix + "timestep", error)
    non_negative(equilibration, prefix + "equilibration", "ps", error)
    prod = positive(production, prefix + "production", "ps", error)
    interval = positive(frame_interval, prefix + "frame_interval", "ps", error)
    if interval < dt * (1 - 1e-9):
        raise error(f"{prefix}frame_interval ({interval:g} ps) is shorter than the time step ({dt:g} ps)",
                    prefix + "frame_interval")
    if interval > prod * (1 + 1e-9):
        raise error(f"{prefix}frame_interval ({interval:g} ps) is longer than the production run ({prod:g} ps): "
                    "the frame interval must fit in the run", prefix + "frame_interval")


def one_of(value: Any, field: str, allowed: tuple, error: type[ConfigError] = ConfigError) -> Any:
    if value not in allowed:
        raise error(f"{field} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}", field)
    return value


def _in(unit: str) -> str:
    return f" ({unit})" if unit else ""


def _fmt(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low == 0 and low_open:
        return "positive" + (f" and {'below' if high_open else 'at most'} {_fmt(high)}" if high is not None else "")
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_fmt(high)}"
    return "a number"
