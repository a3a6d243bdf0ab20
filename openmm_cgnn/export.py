"""TorchScript export of a trained model, for openmm-torch's ``TorchForce``.

hippynn's modules do not script as they are, so :class:`CGPotential` re-implements the forward
pass of HIP-NN / HIP-NN-TS (l = 0, 1, 2) with the trained hippynn weights, plus the repulsive
prior, in TorchScript-friendly code:

* one-hot bead types (hippynn's ``OneHotSpecies`` without the padding column);
* per interaction layer: sensitivities ``exp(-(1/r - 1/mu)^2 sigma^2 / 2) * cos^2(pi r / 2 r_c)``
  (zero beyond r_c); the environment sum over neighbours of sensitivity x tensor component
  (1; r-hat; traceless r-hat r-hat in hippynn's five-component form) x neighbour features;
  the interaction weights; the scalar part plus ``sqrt(|v|^2 + cusp) * vecscales`` (l >= 1) and
  ``sqrt(2 (|q|^2 + q_xx q_yy) + cusp) * quadscales`` (l = 2) plus the self term;
* ResNet wrappers (``res(softplus(layer(x))) + adjust(x)``) or plain softplus layers;
* the hierarchical energy head: a linear read-out of every layer's features, summed over beads.

The network works in angstrom and kcal/mol like hippynn; the conversions from OpenMM's nm and to
kJ/mol happen only in :meth:`CGPotential.forward`. Neighbours come from ``vesin_torch`` (periodic
half list, used in both directions); the box must be wider than twice the cutoff along each
perpendicular width. Sensitivity terms below exp(-80) are set to zero (their exp() would underflow
into slow denormals; the values are < 2e-35). The exported file carries a ``metadata.json`` extra
file (cutoff, bead type names, dtype, units, prior parameters, training metadata).

A saved model uses vesin's TorchScript class, so ``import vesin_torch`` (or ``import openmm_cgnn``)
must run before ``torch.jit.load``; :func:`load_exported` does this for you.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, List, Sequence

# vesin's CUDA neighbour list holds at most n_points * VESIN_CUDA_MAX_PAIRS_PER_POINT pairs (default 128,
# read when a list is computed). A half list at the paper's 1.5 nm cutoff in liquid methanol has about
# 105 pairs per bead; leave room for denser systems unless the user chose a value.
os.environ.setdefault("VESIN_CUDA_MAX_PAIRS_PER_POINT", "512")

import torch
from torch import Tensor

import vesin_torch  # noqa: F401  (registers torch.classes.vesin, needed to script and to load)
from vesin_torch import NeighborList

from ._io import atomic_write, check_output_path
from .prior import PriorParams
from .units import ANGSTROM_PER_NM, KJ_PER_KCAL
from .volume import VolumeTerm, VolumeTermParams  # volume term U_V(V, N): see openmm_cgnn.volume

EXPORT_FORMAT = "openmm-cgnn/torchscript-cg-potential"
EXPORT_FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for a 2-D ``index`` (N, K) -> (N, K, F), through ``index_select``: its backward is an
    atomic ``index_add`` rather than the sort-based accumulation of advanced indexing, which dominated
    the CUDA step time (profiled on an H200: ~85 % of a force evaluation)."""
    return torch.index_select(x, 0, index.reshape(-1)).reshape(index.shape[0], index.shape[1], x.shape[1])


class _Interaction(torch.nn.Module):
    """One HIP-NN(-TS) interaction layer (hippynn ``InteractLayer``/``InteractLayerVec``/``InteractLayerQuad``).

    Input features (N, nf_in) -> output (N, nf_out), before any ResNet wrapper. Distances in angstrom.
    """

    def __init__(self, nf_in: int, nf_out: int, n_dist: int, order: int, hard_cutoff: float, cusp_reg: float):
        super().__init__()
        self.nf_in = nf_in
        self.nf_out = nf_out
        self.n_dist = n_dist
        self.order = order
        self.hard_cutoff = hard_cutoff
        self.cusp_reg = cusp_reg
        self.n_comp = 1 if order == 0 else (4 if order == 1 else 9)
        self.mu = torch.nn.Parameter(torch.zeros(1, n_dist))
        self.sigma = torch.nn.Parameter(torch.zeros(1, n_dist))
        # hippynn stores int_weights as (n_dist, nf_out, nf_in); we keep them as the matrix it multiplies
        # the flattened environment with: (n_dist * nf_in, nf_out).
        self.weights = torch.nn.Parameter(torch.zeros(n_dist * nf_in, nf_out))
        self.selfint = torch.nn.Linear(nf_in, nf_out)
        self.vecscales = torch.nn.Parameter(torch.zeros(nf_out))
        self.quadscales = torch.nn.Parameter(torch.zeros(nf_out))

    def sensitivity(self, r: Tensor) -> Tensor:
        """(P,) distances in angstrom -> (P, n_dist) sensitivities, as hippynn's InverseSensitivityModule."""
        d = r.unsqueeze(1)
        nondim = (d ** -1 - self.mu ** -1) ** 2 / (self.sigma ** -2)
        # exp(-nondim/2) below exp(-80) (< 2e-35) is set to 0: exp of large negative arguments produces
        # denormals, which are an order of magnitude slower on CPUs, and the values are negligible.
        base = torch.exp(-0.5 * torch.clamp(nondim, max=160.0))
        base = torch.where(nondim < 160.0, base, torch.zeros_like(base))
        cut = torch.cos((math.pi / 2) * r / self.hard_cutoff) ** 2
        cut = cut * (r <= self.hard_cutoff).to(cut.dtype)
        return base * cut.unsqueeze(1)

    def forward(self, features: Tensor, r: Tensor, comps: Tensor, pair_slots: Tensor, nbr: Tensor) -> Tensor:
        n = features.shape[0]
        n_pairs = r.shape[0]
        k_max = pair_slots.shape[1]
        sense = self.sensitivity(r)  # (P, D)
        # Environment env[i, c, d, f] = sum over i's neighbours k of comp[c] * sense[d] * features_j[f]
        # (hippynn's envsum of the stacked sensitivities), as one batched matrix product per bead over a
        # neighbour table padded with zeros: pair_slots (N, K) indexes pairs (P = empty slot), nbr (N, K)
        # indexes beads (N = empty slot). Of the two ways to group the product, the one that materialises
        # the smaller per-pair tensor is taken (the first layer has only n_types input features).
        f_pad = _gather_rows(torch.cat([features, features.new_zeros(1, self.nf_in)], 0), nbr)  # (N, K, nf_in)
        if self.nf_in <= self.n_comp:
            s_pad = _gather_rows(torch.cat([sense, sense.new_zeros(1, self.n_dist)], 0), pair_slots)  # (N, K, D)
            c_pad = _gather_rows(torch.cat([comps[:, : self.n_comp], comps.new_zeros(1, self.n_comp)], 0),
                                 pair_slots)  # (N, K, C)
            sf = (s_pad.unsqueeze(3) * f_pad.unsqueeze(2)).reshape(n, k_max, self.n_dist * self.nf_in)
            env = torch.bmm(c_pad.transpose(1, 2), sf)  # (N, C, D*nf_in)
        else:
            stacked = (comps[:, : self.n_comp].unsqueeze(2) * sense.unsqueeze(1)).reshape(
                n_pairs, self.n_comp * self.n_dist)
            s_pad = _gather_rows(torch.cat([stacked, stacked.new_zeros(1, stacked.shape[1])], 0),
                                 pair_slots)  # (N, K, C*D)
            env = torch.bmm(s_pad.transpose(1, 2), f_pad)  # (N, C*D, nf_in)
        out = torch.matmul(env.reshape(n, self.n_comp, self.n_dist * self.nf_in), self.weights)  # (N, C, nf_out)
        total = out[:, 0, :] + self.selfint(features)
        if self.order >= 1:
            vec = out[:, 1:4, :]
            total = total + torch.sqrt(torch.square(vec).sum(dim=1) + self.cusp_reg) * self.vecscales.unsqueeze(0)
        if self.order >= 2:
            q = out[:, 4:9, :]
            qnorm = 2 * (torch.square(q).sum(dim=1) + q[:, 0, :] * q[:, 3, :])
            total = total + torch.sqrt(qnorm + self.cusp_reg) * self.quadscales.unsqueeze(0)
        return total


class _AtomLayer(torch.nn.Module):
    """A dense layer, optionally in hippynn's ResNet wrapper: ``res(softplus(W x + b)) + adjust(x)``."""

    def __init__(self, nf_in: int, nf_middle: int, nf_out: int, resnet: bool):
        super().__init__()
        self.resnet = resnet
        self.base = torch.nn.Linear(nf_in, nf_middle)
        self.res = torch.nn.Linear(nf_middle, nf_out) if resnet else torch.nn.Identity()
        self.adjust = torch.nn.Linear(nf_in, nf_out, bias=False) if resnet and nf_in != nf_out else torch.nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = torch.nn.functional.softplus(self.base(x))
        if self.resnet:
            return self.res(y) + self.adjust(x)
        return y


class _Block(torch.nn.Module):
    """An interaction layer, in hippynn's ResNet wrapper or followed by softplus, then the block's atom layers."""

    def __init__(self, interaction: _Interaction, atom_layers: List[_AtomLayer], resnet: bool,
                 int_res: torch.nn.Module, int_adjust: torch.nn.Module):
        super().__init__()
        self.interaction = interaction
        self.resnet = resnet
        self.int_res = int_res          # Linear(nf_middle, nf_out) with resnet, else Identity
        self.int_adjust = int_adjust    # Linear(nf_in, nf_out, bias=False) when the sizes differ, else Identity
        self.atom_layers = torch.nn.ModuleList(atom_layers)

    def forward(self, features: Tensor, r: Tensor, comps: Tensor, pair_slots: Tensor, nbr: Tensor) -> Tensor:
        y = self.interaction(features, r, comps, pair_slots, nbr)
        if self.resnet:
            x = self.int_res(torch.nn.functional.softplus(y)) + self.int_adjust(features)
        else:
            x = torch.nn.functional.softplus(y)
        for layer in self.atom_layers:
            x = layer(x)
        return x


class CGPotential(torch.nn.Module):
    """TorchScript-able CG potential: HIP-NN(-TS) network + repulsive prior.

    ``forward(positions (N, 3) nm, boxvectors (3, 3) nm, rows) -> energy (scalar, kJ/mol)``, the
    signature of openmm-torch's ``TorchForce`` with periodic boundary conditions. Inputs are cast
    to the module's dtype (chosen at export). Bead types are the buffer ``types`` (N,) of 0-based
    indices into ``type_names``, set with :meth:`set_types`; with a single bead type an empty buffer
    means "every bead is that type" and any number of beads works.
    """

    def __init__(self, n_types: int, blocks: List[_Block], heads: List[torch.nn.Linear], network_cutoff_nm: float,
                 prior: PriorParams | None, max_order: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.n_types = n_types
        self.blocks = torch.nn.ModuleList(blocks)
        self.heads = torch.nn.ModuleList(heads)
        self.max_order = max_order
        self.network_cutoff_nm = float(network_cutoff_nm)
        self.has_prior = prior is not None
        self.prior_e0 = float(prior.energy_at_taper) if prior is not None else 0.0
        self.prior_a = float(prior.a) if prior is not None else 0.0
        self.prior_taper = float(prior.taper) if prior is not None else 0.0
        self.prior_cutoff = float(prior.cutoff) if prior is not None else 0.0
        self.prior_shift = float(math.exp(-prior.a * (prior.cutoff - prior.taper))) if prior is not None else 0.0
        self.cutoff_nm = max(self.network_cutoff_nm, self.prior_cutoff)
        self.cutoff_text = f"{self.cutoff_nm:.6g}"
        self.kj_per_kcal = KJ_PER_KCAL
        self.angstrom_per_nm = ANGSTROM_PER_NM
        self.nl = NeighborList(cutoff=self.cutoff_nm, full_list=False)
        self.register_buffer("types", torch.zeros(0, dtype=torch.long))
        self.register_buffer("_dtype_ref", torch.zeros((), dtype=dtype))
        self.volume_term = VolumeTerm(None, dtype)  # U_V(V, N): zero unless set at export (openmm_cgnn.volume)
        self.to(dtype)

    @torch.jit.export
    def set_types(self, types: Tensor) -> None:
        """Set the bead types: (N,) integer tensor of 0-based indices into the model's type names."""
        types = types.to(torch.long).reshape(-1)
        if types.numel() > 0:
            if int(types.min()) < 0 or int(types.max()) >= self.n_types:
                raise RuntimeError("set_types: bead type indices must lie in [0, n_types)")
        self.types = types.to(self._dtype_ref.device)

    def _bead_types(self, n: int, device: torch.device) -> Tensor:
        if self.types.shape[0] == n:
            return self.types.to(device)
        if self.n_types == 1:
            return torch.zeros(n, dtype=torch.long, device=device)
        raise RuntimeError("CGPotential: the model has several bead types; call set_types(types) with one "
                           "0-based type index per bead (the number of beads has changed or was never set)")

    def _check_box(self, box: Tensor) -> None:
        a = box[0]
        b = box[1]
        c = box[2]
        bc = torch.linalg.cross(b, c)
        ca = torch.linalg.cross(c, a)
        ab = torch.linalg.cross(a, b)
        vol = torch.abs(torch.dot(a, bc))
        widths = torch.stack([vol / torch.linalg.vector_norm(bc), vol / torch.linalg.vector_norm(ca),
                              vol / torch.linalg.vector_norm(ab)])
        if bool((widths <= 2.0 * self.cutoff_nm).any()):
            width = str(float(torch.round(widths.min(), decimals=5)))
            raise RuntimeError("CGPotential: the periodic box is too small for the model: its smallest "
                               "perpendicular width (" + width + " nm) must exceed twice the cutoff ("
                               + self.cutoff_text + " nm); use a larger system")

    def prior_energy(self, r_nm: Tensor) -> Tensor:
        """Prior energy (kJ/mol) of a full pair list (each pair twice) with distances in nm."""
        inside = r_nm < self.prior_cutoff
        # clamp so that pairs beyond the prior's cutoff (masked out below) never underflow exp()
        x = torch.clamp(r_nm, max=self.prior_cutoff) - self.prior_taper
        pair = self.prior_e0 * (torch.exp(-self.prior_a * x) - self.prior_shift)
        return 0.5 * torch.where(inside, pair, torch.zeros_like(pair)).sum()

    def network_energy(self, types: Tensor, vec: Tensor, r: Tensor, i: Tensor, j: Tensor, n: int) -> Tensor:
        """Network energy (kcal/mol) of ``n`` beads from a full pair list sorted by ``i``:
        ``vec`` (P, 3) = r_j - r_i and ``r`` (P,) in angstrom, ``types`` (n,) 0-based."""
        device = vec.device
        n_pairs = r.shape[0]
        # Padded neighbour table: row = bead i, slot k = its k-th pair.
        counts = torch.bincount(i, minlength=n)
        k_max = int(counts.max()) if n_pairs > 0 else 0
        start = torch.cumsum(counts, 0) - counts
        pair_ids = torch.arange(n_pairs, device=device)
        flat = i * k_max + (pair_ids - start[i])
        pair_slots = torch.full((n * k_max,), n_pairs, dtype=torch.long, device=device)
        pair_slots[flat] = pair_ids
        nbr = torch.full((n * k_max,), n, dtype=torch.long, device=device)
        nbr[flat] = j
        pair_slots = pair_slots.reshape(n, k_max)
        nbr = nbr.reshape(n, k_max)
        # Tensor components of each pair: 1, r-hat (l=1), traceless r-hat r-hat in 5 components (l=2)
        comps = [torch.ones_like(r).unsqueeze(1)]
        if self.max_order >= 1:
            rhat = vec / r.unsqueeze(1)
            comps.append(rhat)
            if self.max_order >= 2:
                xx = rhat[:, 0] * rhat[:, 0]
                yy = rhat[:, 1] * rhat[:, 1]
                zz = rhat[:, 2] * rhat[:, 2]
                tr = (xx + yy + zz) / 3.0
                comps.append(torch.stack([xx - tr, rhat[:, 0] * rhat[:, 1], rhat[:, 0] * rhat[:, 2], yy - tr,
                                          rhat[:, 1] * rhat[:, 2]], dim=1))
        comp = torch.cat(comps, dim=1)
        features = torch.nn.functional.one_hot(types, self.n_types).to(vec.dtype)
        feats = [features]
        for block in self.blocks:
            features = block(features, r, comp, pair_slots, nbr)
            feats.append(features)
        energy = torch.zeros((), dtype=vec.dtype, device=device)
        for k, head in enumerate(self.heads):
            energy = energy + head(feats[k]).sum()
        return energy

    def forward(self, positions: Tensor, boxvectors: Tensor) -> Tensor:
        pos = positions.to(self._dtype_ref.dtype)
        box = boxvectors.to(self._dtype_ref.dtype)
        self._check_box(box)
        n = pos.shape[0]
        types = self._bead_types(n, pos.device)
        # vesin gives each pair once (half the memory of a full list, which matters for vesin's fixed
        # per-point pair capacity on CUDA); the network needs both directions.
        i_half, j_half, s_half = self.nl.compute(points=pos.detach(), box=box.detach(), periodic=True,
                                                 quantities="ijS", copy=True)
        i = torch.cat([i_half, j_half])
        j = torch.cat([j_half, i_half])
        shifts = torch.cat([s_half, -s_half])
        order = torch.argsort(i, stable=True)
        i = i[order]
        j = j[order]
        shifts = shifts[order]
        # index_select, not pos[j]: its backward is an atomic index_add (see _gather_rows)
        vec_nm = (torch.index_select(pos, 0, j) - torch.index_select(pos, 0, i)
                  + torch.matmul(shifts.to(pos.dtype), box))
        r_nm = torch.sqrt(torch.square(vec_nm).sum(dim=1))
        energy = torch.zeros((), dtype=pos.dtype, device=pos.device)
        if self.has_prior:
            energy = energy + self.prior_energy(r_nm)
        if len(self.blocks) > 0 or len(self.heads) > 0:
            e_net = self.network_energy(types, vec_nm * self.angstrom_per_nm, r_nm * self.angstrom_per_nm, i, j, n)
            energy = energy + self.kj_per_kcal * e_net
        energy = energy + self.volume_term(box, n)  # box only: no bead forces; seen by the MC barostat
        return energy


# ----------------------------------------------------------------------------------------------
# building from hippynn modules
# ----------------------------------------------------------------------------------------------
def _copy(dst: Tensor, src: Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src.detach().to(dst.dtype).reshape(dst.shape))


def _linear_from(src: torch.nn.Linear) -> torch.nn.Linear:
    lin = torch.nn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
    _copy(lin.weight, src.weight)
    if src.bias is not None:
        _copy(lin.bias, src.bias)
    return lin


def potential_from_hippynn(network: torch.nn.Module, energy: torch.nn.Module, prior: PriorParams | None,
                           dtype: torch.dtype = torch.float32) -> CGPotential:
    """Build a :class:`CGPotential` from hippynn's network (Hipnn/HipnnVec/HipnnQuad) and HEnergy modules."""
    from hippynn.layers.hiplayers.interactions import InteractLayerQuad, InteractLayerVec
    from hippynn.layers.transform import ResNetWrapper

    if not isinstance(network.activation, torch.nn.Softplus) or network.activation.beta != 1 \
            or network.activation.threshold != 20:
        raise NotImplementedError("only hippynn's default activation (Softplus) is supported by the export")
    if getattr(energy, "first_is_interacting", False):
        raise NotImplementedError("HEnergy with first_is_interacting=True is not supported by the export")
    resnet = bool(network.resnet)
    blocks: List[_Block] = []
    max_order = 0
    hard = float(network.dist_hard_max)
    for block in network.blocks:
        wrapped = block[0]
        lay = wrapped.base_layer if resnet else wrapped
        if isinstance(lay, InteractLayerQuad):
            order = 2
        elif isinstance(lay, InteractLayerVec):
            order = 1
        else:
            order = 0
        if type(lay.sensitivity).__name__ not in ("InverseSensitivityModule", "GaussianSensitivityModule"):
            raise NotImplementedError(f"sensitivity {type(lay.sensitivity).__name__} is not supported by the export")
        if type(lay.sensitivity.cutoff).__name__ != "CosCutoff":
            raise NotImplementedError("only hippynn's CosCutoff is supported by the export")
        max_order = max(max_order, order)
        inter = _Interaction(lay.nf_in, lay.nf_out, lay.n_dist, order, float(lay.sensitivity.hard_max_dist),
                             float(getattr(lay, "cusp_reg", 0.0)))
        _copy(inter.mu, lay.sensitivity.mu)
        _copy(inter.sigma, lay.sensitivity.sigma)
        _copy(inter.weights, lay.int_weights.detach().permute(0, 2, 1).reshape(lay.n_dist * lay.nf_in, lay.nf_out))
        inter.selfint = _linear_from(lay.selfint)
        if order >= 1:
            _copy(inter.vecscales, lay.vecscales)
        if order >= 2:
            _copy(inter.quadscales, lay.quadscales)
        atoms: List[_AtomLayer] = []
        for wl in list(block)[1:]:
            base = wl.base_layer if resnet else wl
            nf_out = wl.res_layer.out_features if resnet else base.out_features
            al = _AtomLayer(base.in_features, base.out_features, nf_out, resnet)
            al.base = _linear_from(base)
            if resnet:
                al.res = _linear_from(wl.res_layer)
                if wl.needs_size_adjust:
                    al.adjust = _linear_from(wl.adjust_layer)
            atoms.append(al)
        if resnet:
            assert isinstance(wrapped, ResNetWrapper)
            int_res: torch.nn.Module = _linear_from(wrapped.res_layer)
            int_adjust: torch.nn.Module = (_linear_from(wrapped.adjust_layer) if wrapped.needs_size_adjust
                                           else torch.nn.Identity())
        else:
            int_res, int_adjust = torch.nn.Identity(), torch.nn.Identity()
        blocks.append(_Block(inter, atoms, resnet, int_res, int_adjust))
    heads = [_linear_from(h) for h in energy.layers]
    n_types = int(network.nf_in)
    return CGPotential(n_types, blocks, heads, hard / ANGSTROM_PER_NM, prior, max_order, dtype)


def potential_from_model_dir(model_dir: str | Path, dtype: str | torch.dtype = "float32") -> tuple[CGPotential, Any]:
    """(un-scripted CGPotential, TrainedModel) for a trained model directory."""
    from .training import load_trained

    if isinstance(dtype, str):
        dtype = _dtype(dtype)
    loaded = load_trained(model_dir, dtype=torch.float64)
    pot = potential_from_hippynn(loaded.network, loaded.energy, loaded.prior, dtype=dtype)
    return pot, loaded


def _dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}") from None


# ----------------------------------------------------------------------------------------------
# export / load
# ----------------------------------------------------------------------------------------------
def export_model(model_dir: str | Path, out_path: str | Path, dtype: str = "float32", overwrite: bool = False,
                 bead_types: Sequence[int] | None = None) -> Path:
    """Script the trained model in ``model_dir`` and save it to ``out_path`` (TorchScript ``.pt``).

    :param dtype: "float32" or "float64": the precision of the exported module.
    :param bead_types: optional (N,) 0-based bead types stored in the module (needed before use when the
        model has several bead types; can also be set later with ``module.set_types``).
    :return: ``out_path``. The file's ``metadata.json`` extra file holds cutoff_nm, type_names, dtype,
        units, the prior parameters and the training metadata.
    """
    out_path = check_output_path(out_path, overwrite)
    torch_dtype = _dtype(dtype)
    pot, loaded = potential_from_model_dir(model_dir, torch_dtype)
    if bead_types is not None:
        pot.set_types(torch.as_tensor(list(bead_types), dtype=torch.long))
    volume = _volume_params(model_dir)
    pot.volume_term = VolumeTerm(volume, torch_dtype)
    scripted = torch.jit.script(pot)
    meta = {
        "format": EXPORT_FORMAT, "version": EXPORT_FORMAT_VERSION,
        "cutoff_nm": pot.cutoff_nm, "network_cutoff_nm": pot.network_cutoff_nm,
        "type_names": loaded.type_names, "dtype": dtype,
        "type_masses": loaded.metadata.get("type_masses"),
        "units": {"positions": "nm", "boxvectors": "nm", "energy": "kJ/mol", "forces": "kJ/mol/nm"},
        "signature": "forward(positions (N,3) nm, boxvectors (3,3) nm rows) -> energy kJ/mol",
        "prior": loaded.prior.to_dict(),
        "network_class": loaded.blob["network_class"], "tensor_order": loaded.tensor_order,
        "training": loaded.metadata,
        "volume_term": volume.to_dict() if volume is not None else None,
    }
    extra = {"metadata.json": json.dumps(meta, default=str)}
    atomic_write(out_path, lambda tmp: torch.jit.save(scripted, str(tmp), _extra_files=extra))
    return out_path


def _volume_params(model_dir: str | Path) -> VolumeTermParams | None:
    """The fitted volume term of a model directory (``volume.json``), or None."""
    path = Path(model_dir) / "volume.json"
    return VolumeTermParams.load(path) if path.exists() else None


def load_exported(path: str | Path,
                  map_location: str | torch.device | None = None) -> tuple[torch.jit.ScriptModule, dict]:
    """Load an exported CG potential: (ScriptModule, metadata dict of the file's ``metadata.json``)."""
    import vesin_torch  # noqa: F401  (registers the TorchScript class the saved module refers to)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"exported model '{path}' does not exist")
    extra = {"metadata.json": ""}
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except RuntimeError as exc:
        if "torch.classes.vesin" in str(exc):
            raise RuntimeError(
                f"cannot load '{path}': it uses vesin's TorchScript neighbour list; run `import openmm_cgnn` "
                "or `import vesin_torch` before torch.jit.load (and check that vesin-torch matches this torch)"
            ) from exc
        raise
    meta = json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
    return module, meta
