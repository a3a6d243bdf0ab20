"""Temperature-aware CG models: U(R, T) = E(R) - T S(R), trained on data at several temperatures.

Force matching at one temperature fits that temperature's many-body potential of mean force; a
single-temperature model trained on data from several temperatures must average them. Following the
energy-entropy split of Venturin and Clementi (arXiv:2606.14111), a temperature-aware model learns

    U(R, T) = E(R) - T S(R),        F(R, T) = -grad E(R) + T grad S(R),

with E and S two read-outs of the same HIP-NN(-TS) representation (two ``HEnergy`` heads on one
network; the repulsive prior stays T-independent and is added to E). Inside, the model is written
as ``U = A(R) + tau(T) B(R)`` with ``tau = (T - t_ref) / t_scale`` (``t_ref`` the middle of the
training temperatures, ``t_scale`` half their spread, so tau lies in [-1, 1] on the training data):
that is the same function, better conditioned for training, and

    E(R) = A(R) - (t_ref / t_scale) B(R),       S(R) = -B(R) / t_scale.

With B = 0 the model is the plain model A(R). Each frame's temperature (the state temperature of its
data set, ``CGDataset.temperature``) is an extra input of the hippynn graph during training.

The other form (``TrainConfig.temperature_form = "input"``) gives tau(T) to the network as one more
input feature of every bead, next to the one-hot bead type: U(R, T) is then any smooth function of T
that the network represents, with no explicit split; S(R) = -dU/dT comes from autograd.

Export: :class:`ThermalCGPotential` is the TorchScript potential of :mod:`openmm_cgnn.export` with
the second read-out and ``forward(positions (N, 3) nm, boxvectors (3, 3) nm, temperature) -> kJ/mol``;
openmm-torch passes the TorchForce global parameter ``"temperature"`` (K) as that third argument.
:func:`add_temperature_parameter` declares the parameter (default: the run temperature given to
``create_system``, i.e. the integrator's temperature in ``openmm-cgnn simulate``); change it at run
time with ``context.setParameter("temperature", T)``. (The force does not request the energy
derivative with respect to the parameter, -S(R): openmm-torch would then run autograd in every
energy-only evaluation, which OpenMM's pressure estimator cannot do. ``module.energy_entropy``
gives E(R) and S(R).)

Volume term: :func:`fit_thermal_volume_term` pressure-matches the model at each training data
set's own temperature (``volume.json`` in the model directory, which ``export_model`` builds in);
with two temperatures at one density it fits the offset ``a`` and the temperature trend ``c`` of
U_V(V, N, T). The exported model takes U_V at its temperature parameter.

The model records its training temperatures; a run far outside them (more than
:data:`EXTRAPOLATION_MARGIN` times their spread beyond the range) logs a warning: nothing
constrains how S(R) behaves there.

Units: K for temperatures, kJ/mol for E and U, kJ/mol/K for S, nm for positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError
from .export import CGPotential, input_features, potential_from_hippynn

PARAMETER = "temperature"  # name of the TorchForce global parameter (K)
# a run temperature further than this fraction of the training spread (at least 10 % of the nearest
# training temperature) outside the training range logs a warning
EXTRAPOLATION_MARGIN = 0.5
_log = logging.getLogger("openmm_cgnn.thermal")


@dataclass(frozen=True)
class TemperatureScale:
    """The training temperatures of a temperature-aware model and its internal scale, K.

    ``tau(T) = (T - t_ref) / t_scale``; ``temperatures`` are the distinct training temperatures.
    """

    t_ref: float
    t_scale: float
    temperatures: tuple[float, ...]
    form: str = "split"   # "split": U = A(R) + tau B(R); "input": tau is an input feature of the network

    def tau(self, temperature: Any) -> Any:
        return (temperature - self.t_ref) / self.t_scale

    @property
    def t_min(self) -> float:
        return min(self.temperatures)

    @property
    def t_max(self) -> float:
        return max(self.temperatures)

    def to_dict(self) -> dict[str, Any]:
        what = ("U(R,T) = E(R) - T S(R) = A(R) + (T - t_ref)/t_scale B(R)" if self.form == "split" else
                "U(R,T) = U_net(R; tau), tau = (T - t_ref)/t_scale an input feature of every bead")
        return {"form": self.form, "equation": what, "t_ref_K": self.t_ref, "t_scale_K": self.t_scale,
                "training_temperatures_K": list(self.temperatures)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TemperatureScale":
        form = d.get("form", "split")
        return cls(float(d["t_ref_K"]), float(d["t_scale_K"]), tuple(float(t) for t in d["training_temperatures_K"]),
                   form if form in ("split", "input") else "split")


def temperature_scale(sets: Sequence[Any], paths: Sequence[Path] | None = None,
                      form: str = "split") -> TemperatureScale:
    """The scale for CG data sets (:class:`~openmm_cgnn.dataset.CGDataset`) whose state temperatures
    are read from their metadata; ConfigError unless they span two or more temperatures."""
    temps = []
    for k, ds in enumerate(sets):
        try:
            temps.append(float(ds.temperature))
        except (KeyError, TypeError, ValueError):
            name = f"'{paths[k]}'" if paths is not None else f"number {k + 1}"
            raise ConfigError(f"data set {name} records no state temperature (metadata state.temperature_K); "
                              "a temperature-aware model needs it: map the reference again with 'openmm-cgnn map'",
                              "temperature_aware") from None
    distinct = sorted(set(round(t, 6) for t in temps))
    if len(distinct) < 2:
        raise ConfigError(f"a temperature-aware model needs data sets at two or more temperatures; got only "
                          f"{distinct[0]:g} K: add a data set at another temperature or train without "
                          "--temperature-aware", "temperature_aware")
    lo, hi = distinct[0], distinct[-1]
    return TemperatureScale(0.5 * (lo + hi), 0.5 * (hi - lo), tuple(distinct), form)


def frame_temperatures(sets: Sequence[Any]) -> np.ndarray:
    """(F_total, 1) the state temperature (K) of every frame of ``sets``, in the order of
    ``training._hippynn_arrays`` (data sets concatenated)."""
    return np.concatenate([np.full((ds.n_frames, 1), float(ds.temperature)) for ds in sets])


def temperature_input(temperature: float | np.ndarray | None, n_frames: int) -> np.ndarray:
    """(n_frames, 1) temperatures in K from one number or one per frame; ConfigError for none or a bad one."""
    if temperature is None:
        raise ConfigError("this model is temperature-aware: give the temperature (K) to predict at", "temperature")
    t = np.asarray(temperature, dtype=np.float64).reshape(-1)
    if t.size == 1:
        t = np.full(n_frames, float(t[0]))
    if t.size != n_frames or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ConfigError(f"temperature must be one positive number of kelvin or one per frame ({n_frames})",
                          "temperature")
    return t.reshape(n_frames, 1)


# ----------------------------------------------------------------------------------------------
# hippynn graph
# ----------------------------------------------------------------------------------------------
class ThermalCombination(torch.nn.Module):
    """``U = A + (T - t_ref) / t_scale * B`` per frame: A, B (n_frames, 1) energies, T (n_frames, 1) K."""

    def __init__(self, t_ref: float, t_scale: float):
        super().__init__()
        self.t_ref = float(t_ref)
        self.t_scale = float(t_scale)

    def forward(self, a: Tensor, b: Tensor, temperature: Tensor) -> Tensor:
        tau = (temperature.to(a.dtype).reshape(a.shape) - self.t_ref) / self.t_scale
        return a + tau * b


def add_thermal_energy(network: Any, henergy: Any, scale: TemperatureScale) -> tuple[Any, Any, Any]:
    """Add to a hippynn graph the per-frame temperature input (db name ``"temperature"``, K, shape
    (F, 1)), a second read-out B(R) of ``network`` and the node U(R, T) = A(R) + tau(T) B(R), where
    A is ``henergy``. Returns (temperature node, B read-out node, U node)."""
    from hippynn.graphs.indextypes import IdxType
    from hippynn.graphs.nodes.base import InputNode, SingleNode
    from hippynn.graphs.nodes.targets import HEnergyNode

    class _ThermalEnergyNode(SingleNode):
        _index_state = IdxType.Molecules

    temperature = InputNode(name="temperature", db_name="temperature", index_state=IdxType.Molecules)
    hentropy = HEnergyNode("HEntropy", (network,))
    total = _ThermalEnergyNode("ThermalEnergy", (henergy.main_output, hentropy.main_output, temperature),
                               module=ThermalCombination(scale.t_ref, scale.t_scale))
    return temperature, hentropy, total


class AppendTemperature(torch.nn.Module):
    """Bead input features (n_atoms, n_types) -> (n_atoms, n_types + 1): the one-hot type and the
    bead's frame tau = (T - t_ref) / t_scale; T (n_frames, 1) K, ``mol_index`` (n_atoms,) frame of each bead."""

    def __init__(self, t_ref: float, t_scale: float):
        super().__init__()
        self.t_ref = float(t_ref)
        self.t_scale = float(t_scale)

    def forward(self, features: Tensor, temperature: Tensor, mol_index: Tensor) -> Tensor:
        tau = (temperature.reshape(-1) - self.t_ref) / self.t_scale
        column = tau[mol_index].unsqueeze(1).to(temperature.dtype)
        return torch.cat([features.to(column.dtype), column], dim=1)


def temperature_input_features(pdx: Any, scale: TemperatureScale) -> tuple[Any, Any]:
    """For the "input" form: the per-frame temperature input node (db name ``"temperature"``, K) and a
    node of bead input features [one-hot type, tau] built from the padding indexer ``pdx``."""
    from hippynn.graphs.indextypes import IdxType
    from hippynn.graphs.nodes.base import InputNode, SingleNode

    class _FeaturesNode(SingleNode):
        _index_state = IdxType.Atoms

    temperature = InputNode(name="temperature", db_name="temperature", index_state=IdxType.Molecules)
    features = _FeaturesNode("FeaturesWithTemperature", (pdx.indexed_features, temperature, pdx.mol_index),
                             module=AppendTemperature(scale.t_ref, scale.t_scale))
    return temperature, features


def energy_entropy_hippynn(model: Any, positions_nm: np.ndarray, boxes_nm: np.ndarray,
                           bead_types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E(R) (kJ/mol, prior included) and S(R) (kJ/mol/K) of a temperature-aware
    :class:`~openmm_cgnn.training.TrainedModel` of the "split" form by hippynn's prediction at two
    temperatures (U is linear in T): arrays (F,)."""
    from .training import predict_hippynn

    scale = model.thermal
    if scale.form != "split":
        raise ConfigError("E(R) and S(R) from two predictions need the 'split' form (U linear in T)",
                          "temperature_form")
    t1, t2 = scale.t_ref, scale.t_ref + scale.t_scale
    u1, _ = predict_hippynn(model, positions_nm, boxes_nm, bead_types, temperature=t1)
    u2, _ = predict_hippynn(model, positions_nm, boxes_nm, bead_types, temperature=t2)
    entropy = -(u2 - u1) / (t2 - t1)
    return u1 + t1 * entropy, entropy


# ----------------------------------------------------------------------------------------------
# TorchScript export
# ----------------------------------------------------------------------------------------------
class ThermalCGPotential(CGPotential):
    """:class:`~openmm_cgnn.export.CGPotential` with a temperature:
    ``forward(positions (N, 3) nm, boxvectors (3, 3) nm, temperature (K, any one-element tensor))
    -> U(R, T) kJ/mol``. "split" form: the network's features are computed once and read out twice
    (A and B); "input" form: tau(T) is appended to every bead's input features. The prior is
    T-independent; the volume term U_V(V, N, T) (:mod:`openmm_cgnn.volume`, zero unless fitted with
    :func:`fit_thermal_volume_term`) is taken at the model's temperature. Methods inherited from CGPotential that take no temperature
    (``energy_of_layout``, ``energy_from_table``) give U at ``t_ref`` (split form only)."""

    def __init__(self, base: CGPotential, entropy_heads: List[torch.nn.Linear], scale: TemperatureScale,
                 prior: Any, dtype: torch.dtype):
        self_input = scale.form == "input"
        # an "input" network has one more input feature (tau) than bead types
        super().__init__(base.n_types - 1 if self_input else base.n_types, list(base.blocks), list(base.heads),
                         base.network_cutoff_nm, prior, base.max_order, dtype,
                         neighbour_capacity=base.neighbour_capacity)
        self.entropy_heads = torch.nn.ModuleList(entropy_heads)
        self.temperature_input = self_input
        self.t_ref = float(scale.t_ref)
        self.t_scale = float(scale.t_scale)
        self.to(dtype)

    def _table(self, pos: Tensor, box: Tensor) -> Tuple[Tensor, Tensor]:
        if pos.shape[0] != self.n_configured:
            self.configure(pos.shape[0], box, 0)
        if self.reuse_on_cpu and pos.device.type == "cpu":
            return self._reused_table(pos, box)
        return self.neighbour_table(pos, box)

    def _parts(self, pos: Tensor, box: Tensor, tau: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(A, B, validity) in kJ/mol: split form: the energy at t_ref (prior, network read-out A,
        volume term at t_ref) and the read-out B (with t_scale dU_V/dT: U_V is linear in T too);
        input form: U at ``tau`` (volume term at that temperature) and B = 0; then 1 or NaN
        (neighbour-table overflow). The volume term follows the model's temperature, not the buffer
        that ``create_system`` sets, so that ``context.setParameter`` changes both."""
        nbr, overflow = self._table(pos, box)
        n = pos.shape[0]
        types = self._bead_types(n, pos.device)
        vec_nm, r_nm = self._slot_geometry(pos, box, nbr)
        a = torch.zeros((), dtype=pos.dtype, device=pos.device)
        if self.has_prior:
            a = a + self.prior_energy(r_nm)
        extra: Optional[Tensor] = None
        if self.temperature_input:
            extra = tau
        feats = self.network_features(types, vec_nm * self.angstrom_per_nm, r_nm * self.angstrom_per_nm, nbr,
                                      extra)
        a_net = torch.zeros((), dtype=pos.dtype, device=pos.device)
        for k, head in enumerate(self.heads):
            a_net = a_net + head(feats[k]).sum()
        b_net = torch.zeros((), dtype=pos.dtype, device=pos.device)
        for k, head in enumerate(self.entropy_heads):
            b_net = b_net + head(feats[k]).sum()
        volume_a, volume_b = self._volume_parts(box, n, tau)
        b = self.kj_per_kcal * b_net + volume_b
        a = a + self.kj_per_kcal * a_net + volume_a
        invalid = torch.where(overflow, torch.full_like(a, float("nan")), torch.ones_like(a))
        return a, b, invalid

    @torch.jit.export
    def energy_entropy(self, positions: Tensor, boxvectors: Tensor) -> Tuple[Tensor, Tensor]:
        """(E(R) kJ/mol, S(R) kJ/mol/K) with U(R, T) = E(R) - T S(R); E includes the prior.
        Split form only (the input form has no T-independent split)."""
        if self.temperature_input:
            raise RuntimeError("energy_entropy: a model with the temperature as a network input has no "
                               "T-independent E(R) and S(R); use forward at two temperatures")
        pos = positions.to(self._dtype_ref.dtype)
        box = boxvectors.to(self._dtype_ref.dtype)
        a, b, invalid = self._parts(pos, box, torch.zeros((), dtype=pos.dtype, device=pos.device))
        entropy = -b / self.t_scale
        return (a - self.t_ref * b / self.t_scale) * invalid, entropy * invalid

    def _input_features(self, types: Tensor, tau: Tensor, dtype: torch.dtype) -> Tensor:
        """One-hot bead types, and tau as one more input of every bead in the input form."""
        return input_features(types, self.n_types, dtype, tau if self.temperature_input else None)

    def _read_out(self, features: Tensor, output: Tensor, tau: Tensor) -> Tensor:
        """A + tau B of the network (kcal/mol): the two read-outs of the same features."""
        entropy = torch.zeros((), dtype=output.dtype, device=output.device)
        for k, head in enumerate(self.entropy_heads):
            entropy = entropy + head(features if k == 0 else output).sum()
        return self._heads_read_out(features, output) + tau * entropy

    def _output_weight(self, tau: Tensor) -> Tensor:
        weight = self._heads_output_weight()
        for k, head in enumerate(self.entropy_heads):
            if k == 1:
                weight = weight + tau * head.weight
        return weight

    def _volume_parts(self, box: Tensor, n: int, tau: Tensor) -> Tuple[Tensor, Tensor]:
        """The volume term (kJ/mol) as the model's two parts: (at t_ref, its tau coefficient) in the split
        form (U_V is linear in T), (at tau, 0) in the input form."""
        if self.temperature_input:
            return self.volume_term.at_temperature(box, n, self.t_ref + tau * self.t_scale), torch.zeros_like(tau)
        return (self.volume_term.at_temperature(box, n, torch.full_like(tau, self.t_ref)),
                self.t_scale * self.volume_term.temperature_derivative(box, n))

    def forward(self, positions: Tensor, boxvectors: Tensor, temperature: Tensor) -> Tensor:
        pos = positions.to(self._dtype_ref.dtype)
        box = boxvectors.to(self._dtype_ref.dtype)
        # a no-op where openmm-torch already hands the parameter over on the model's device
        tau = (temperature.to(device=pos.device, dtype=pos.dtype).sum() - self.t_ref) / self.t_scale
        if self.analytic_gradient:  # forces by hand, handed to autograd as CGPotential.energy_from_table does
            nbr, overflow = self._table(pos, box)
            with torch.no_grad():
                fixed = pos.clone()
                energy, grad = self._energy_and_gradient(fixed, box, nbr, tau)
            volume_a, volume_b = self._volume_parts(box, pos.shape[0], tau)
            energy = energy + ((pos - fixed) * grad).sum() + volume_a + tau * volume_b
            return energy * torch.where(overflow, torch.full_like(energy, float("nan")), torch.ones_like(energy))
        a, b, invalid = self._parts(pos, box, tau)
        return (a + tau * b) * invalid


def thermal_potential_from_trained(loaded: Any, dtype: torch.dtype = torch.float32,
                                   neighbour_capacity: int = 0) -> ThermalCGPotential:
    """The :class:`ThermalCGPotential` of a temperature-aware :class:`~openmm_cgnn.training.TrainedModel`."""
    from .export import _linear_from

    if loaded.thermal is None:
        raise ConfigError("this model is not temperature-aware (trained without --temperature-aware)",
                          "temperature_aware")
    base = potential_from_hippynn(loaded.network, loaded.energy, loaded.prior, dtype=dtype,
                                  neighbour_capacity=neighbour_capacity)
    heads = [_linear_from(h) for h in loaded.entropy.layers] if loaded.entropy is not None else []
    return ThermalCGPotential(base, heads, loaded.thermal, loaded.prior, dtype)


def is_temperature_aware(metadata: dict) -> bool:
    """Whether an exported model's metadata describe a temperature-aware model."""
    return bool(metadata.get("temperature_aware"))


def check_temperature(metadata: dict, temperature: float) -> bool:
    """Log a warning when ``temperature`` (K) is far outside the model's training temperatures;
    True when it is within the range plus the margin."""
    scale = TemperatureScale.from_dict(metadata["temperature_aware"])
    margin = max(EXTRAPOLATION_MARGIN * (scale.t_max - scale.t_min), 0.1 * scale.t_min)
    inside = scale.t_min - margin <= temperature <= scale.t_max + margin
    if not inside:
        _log.warning("the temperature-aware model was trained at %s K; %.1f K is far outside that range, where "
                     "nothing constrains its entropy term S(R): check the results against a reference",
                     ", ".join(f"{t:g}" for t in scale.temperatures), temperature)
    return inside


def add_temperature_parameter(force: Any, metadata: dict, temperature: float | None) -> float:
    """Declare the TorchForce global parameter ``"temperature"`` (K).

    Its default is ``temperature`` (the run temperature) or, when None, the middle of the training
    temperatures. Returns the default, after :func:`check_temperature`."""
    scale = TemperatureScale.from_dict(metadata["temperature_aware"])
    default = float(temperature) if temperature is not None else scale.t_ref
    if not np.isfinite(default) or default <= 0:
        raise ConfigError(f"the run temperature must be a positive number of kelvin, got {temperature!r}",
                          "temperature")
    check_temperature(metadata, default)
    force.addGlobalParameter(PARAMETER, default)
    return default


# ----------------------------------------------------------------------------------------------
# volume term
# ----------------------------------------------------------------------------------------------
def thermal_volume_term(loaded: Any, sets: Sequence[Any], paths: Sequence[Path], config: Any) -> Any:
    """The volume term of a loaded temperature-aware model (a :class:`~openmm_cgnn.volume.VolumeTermParams`),
    or None when a data set carries no all-atom pressures; ``sets`` are the CG data sets at ``paths``.

    Like the volume fit of a plain model (``openmm_cgnn.training``), but the model's CG pressure at
    each data set is measured at that data set's temperature (its ``temperature`` input): a short CG
    NVT run (``config.volume_source`` "cg-nvt") or the virial on the mapped frames ("mapped").
    """
    from .volume import cg_nvt_pressures, fit_from_datasets, fit_volume_term, pressure_point_from_run

    if any(ds.pressure is None for ds in sets):
        return None
    if config.volume_source == "cg-nvt":
        module = torch.jit.script(thermal_potential_from_trained(loaded, torch.float32))
        points = []
        for k, (p, ds) in enumerate(zip(paths, sets)):
            series = cg_nvt_pressures(module, ds, ds.temperature, config.volume_nvt_ps,
                                      config.volume_nvt_equilibration_ps, seed=config.seed + k + 1,
                                      temperature_aware=loaded.thermal.to_dict())
            points.append(pressure_point_from_run(series, ds, label=p.name))
        volume = fit_volume_term(points)
        volume.fit["cg_pressure_from"] = (f"CG NVT run of the temperature-aware model at each reference volume and "
                                          f"temperature ({config.volume_nvt_equilibration_ps:g} + "
                                          f"{config.volume_nvt_ps:g} ps)")
    else:
        pot = thermal_potential_from_trained(loaded, torch.float64)

        def energy_for(ds: Any):
            if len(loaded.type_names) > 1:
                pot.set_types(torch.as_tensor(ds.bead_types, dtype=torch.long))
            t = torch.tensor(float(ds.temperature), dtype=torch.float64)

            def energy(pos: np.ndarray, box: np.ndarray) -> float:
                with torch.no_grad():
                    return float(pot(torch.as_tensor(pos, dtype=torch.float64),
                                     torch.as_tensor(box, dtype=torch.float64), t))
            return energy

        volume = fit_from_datasets(sets, energy_for, max_frames=config.volume_max_frames,
                                   labels=[p.name for p in paths])
        volume.fit["cg_pressure_from"] = ("virial of the temperature-aware model on the mapped all-atom frames, "
                                          "at each data set's temperature")
    return volume


def fit_thermal_volume_term(model_dir: str | Path, datasets: Sequence[str | Path] | None = None, config: Any = None,
                            verbose: bool = False) -> Any:
    """Pressure-match a temperature-aware model directory and write its ``volume.json``
    (:mod:`openmm_cgnn.volume`); return the :class:`~openmm_cgnn.volume.VolumeTermParams`, or None
    (nothing written) when a training data set carries no all-atom pressures.

    ``train`` does this itself when its data carry pressures; call it to refit, e.g. on other data sets.
    ``datasets``: CG data sets with all-atom pressures (default: the model's training data sets);
    ``config``: a :class:`~openmm_cgnn.training.TrainConfig` (default: the model's own). Export the
    model afterwards: ``export_model`` builds the term in.
    """
    from .training import load_datasets, load_trained
    from .volume import describe

    model_dir = Path(model_dir)
    loaded = load_trained(model_dir)
    if loaded.thermal is None:
        raise ConfigError(f"'{model_dir}' is not a temperature-aware model: fit its volume term with "
                          "openmm_cgnn.training.fit_model_volume_term", "temperature_aware")
    config = config or loaded.config
    paths = [Path(p) for p in (datasets or [d["path"] for d in loaded.metadata["datasets"]])]
    volume = thermal_volume_term(loaded, load_datasets(paths), paths, config)
    if volume is None:
        return None
    volume.save(model_dir / "volume.json")
    if verbose:
        print(f"volume term (pressure matching): {describe(volume)} -> {model_dir / 'volume.json'}", flush=True)
    return volume
