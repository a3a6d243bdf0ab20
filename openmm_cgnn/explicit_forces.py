"""Explicit forces for training: the forces of a one-block HIP-NN(-TS) written out by hand, so that a
force-matching step needs one backward pass (the loss's, with respect to the weights) instead of a
double backward through the (pairs x components x sensitivities) tensors of autograd forces.

The force of a network of one interaction block (every preset) is a closed expression of the
weights (see :meth:`openmm_cgnn.export._Block.output_and_slot_gradient`): per slot of an (N, K)
neighbour table, batched matrix products of the environment's gradient with the sensitivities and
their slopes. :class:`ExplicitForces` evaluates that expression on hippynn's own parameters, taken by
reference (the interaction weights are reshaped on every call), so hippynn's optimiser, schedule and
checkpoint stay as they are; autograd differentiates the expression once for the loss.

:func:`explicit_force_node` adds it to a hippynn graph in place of ``MultiGradientNode``'s forces
(``TrainConfig.force_mode = "explicit"``). Units are hippynn's (angstrom, kcal/mol).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .export import _AtomLayer, _Block, _Interaction, cutoff_and_slope, park_empty_slots

#: the sensitivity modules whose form the explicit forces know
_SENSITIVITIES = ("InverseSensitivityModule", "GaussianSensitivityModule")
#: on a CPU, the table is worked through in blocks of rows of at most this many (slot x sensitivity x
#: feature) elements per tensor (16 MB in float32): larger blocks are several times slower per element
ROW_BLOCK_ELEMENTS = 1 << 22


def explicit_forces_unsupported(network: torch.nn.Module, energy: torch.nn.Module) -> str | None:
    """Why the forces of hippynn ``network`` + ``energy`` (HEnergy) cannot be written explicitly, or None."""
    if len(network.blocks) != 1:
        return f"{len(network.blocks)} interaction blocks (explicit forces need one)"
    if not isinstance(network.activation, torch.nn.Softplus) or network.activation.beta != 1 \
            or network.activation.threshold != 20:
        return "an activation other than hippynn's default Softplus"
    if getattr(energy, "first_is_interacting", False) or len(energy.layers) != 2:
        return "an energy read-out other than HEnergy of the input and the block's features"
    lay = network.blocks[0][0].base_layer if network.resnet else network.blocks[0][0]
    if type(lay.sensitivity).__name__ not in _SENSITIVITIES:
        return f"sensitivity {type(lay.sensitivity).__name__}"
    if type(lay.sensitivity.cutoff).__name__ != "CosCutoff":
        return "a cutoff other than CosCutoff"
    return None


class _SensitivityAndSlope(torch.autograd.Function):
    """The sensitivities s = g c and their slopes p = ds/dr = (sigma^2 o c / r^2 + c') g (N, K, D), with
    o = 1/r - 1/mu, g = exp(-sigma^2 o^2 / 2) (exponent floored at ``floor``) and the cutoff c(r), as
    :meth:`openmm_cgnn.export._Interaction.sensitivity_and_slope`, differentiable with respect to mu and
    sigma (1, D) by a hand-written backward: a few fused passes over (N, K, D) instead of autograd's
    two dozen. Distances (N, K) carry no gradient."""

    @staticmethod
    def forward(ctx, r: Tensor, mu: Tensor, sigma: Tensor, hard_cutoff: float, floor: float):
        inv_r = (1.0 / r).unsqueeze(2)
        sigma2 = torch.square(sigma)
        offset = inv_r - 1.0 / mu
        gauss = torch.square(offset).mul_(-0.5 * sigma2).clamp_(min=floor).exp_()
        cut, cut_slope = cutoff_and_slope(r, hard_cutoff)
        h = torch.square(inv_r) * cut  # c / r^2 (N, K, 1)
        slope = (offset * sigma2).mul_(h).add_(cut_slope).mul_(gauss)
        sense = gauss * cut
        ctx.save_for_backward(offset, gauss, sense, slope, h, mu, sigma)
        return sense, slope

    @staticmethod
    def backward(ctx, grad_sense: Tensor, grad_slope: Tensor):
        # With A = dL/ds, B = dL/dp, T = A s + B p and U = B g c / r^2, per element:
        # dL/do = sigma^2 (U - o T); dL/dsigma = sigma o (2 U - o T); do/dmu = 1/mu^2
        # (the floor's derivative is ignored: where it holds, every term is below exp(floor))
        offset, gauss, sense, slope, h, mu, sigma = ctx.saved_tensors
        if grad_sense is None:
            grad_sense = torch.zeros_like(sense)
        if grad_slope is None:
            grad_slope = torch.zeros_like(slope)
        total = grad_sense * sense
        total.addcmul_(grad_slope, slope)
        along = (grad_slope * gauss).mul_(h)
        diff = total.mul_(offset).neg_().add_(along)   # U - o T
        grad_offset = diff.sum(dim=(0, 1)).unsqueeze(0)
        grad_sigma = diff.add_(along).mul_(offset).sum(dim=(0, 1)).unsqueeze(0)  # sum of o (2U - o T)
        sigma2 = torch.square(sigma)
        return None, grad_offset * sigma2 / torch.square(mu), grad_sigma * sigma, None, None


class _TrainingInteraction(_Interaction):
    """The export's interaction layer whose sensitivities are differentiable with respect to mu and sigma."""

    def sensitivity_and_slope(self, r: Tensor) -> tuple[Tensor, Tensor]:
        return _SensitivityAndSlope.apply(r, self.mu, self.sigma, self.hard_cutoff, self.exponent_floor)


def _tensor_order(layer: torch.nn.Module) -> int:
    from hippynn.layers.hiplayers.interactions import InteractLayerQuad, InteractLayerVec

    if isinstance(layer, InteractLayerQuad):
        return 2
    return 1 if isinstance(layer, InteractLayerVec) else 0


class ExplicitForces(torch.nn.Module):
    """Forces (n_molecules, n_atoms_max, 3) of a one-block hippynn network with an HEnergy read-out,
    written out by hand, differentiable with respect to the network's weights (not the positions).

    With ``entropy`` (the second HEnergy read-out B of a temperature-aware model of the "split" form,
    :mod:`openmm_cgnn.thermal`) the energy is U = A + tau B with each frame's tau = (T - t_ref) / t_scale:
    the read-out weight of every bead is then A's plus its frame's tau times B's. (The "input" form needs
    nothing here: its tau is one more input feature, given with the others.)

    The hippynn modules are held by reference: every parameter is hippynn's own Parameter object.
    """

    def __init__(self, network: torch.nn.Module, energy: torch.nn.Module, entropy: torch.nn.Module | None = None,
                 t_ref: float = 0.0, t_scale: float = 1.0):
        super().__init__()
        for read_out in (energy, entropy):
            why = None if read_out is None else explicit_forces_unsupported(network, read_out)
            if why is not None:
                raise NotImplementedError(f"explicit forces are not available for this network: {why}")
        # registered first, so that every parameter is named (and moved between devices) as in hippynn's modules
        self.network = network
        self.energy = energy
        self.entropy = entropy
        self.t_ref, self.t_scale = float(t_ref), float(t_scale)
        resnet = bool(network.resnet)
        block = network.blocks[0]
        wrapped = block[0]
        lay = wrapped.base_layer if resnet else wrapped
        self.layer = lay   # hippynn's interaction layer: its int_weights are reshaped on every call
        order = _tensor_order(lay)
        inter = _TrainingInteraction(lay.nf_in, lay.nf_out, lay.n_dist, order, float(lay.sensitivity.hard_max_dist),
                             float(getattr(lay, "cusp_reg", 0.0)))
        # hippynn's parameters, shared (same shapes as the export's)
        inter.mu = lay.sensitivity.mu
        inter.sigma = lay.sensitivity.sigma
        inter.selfint = lay.selfint
        del inter.weights, inter.vecscales, inter.quadscales  # the export's own, replaced by hippynn's:
        inter.weights = None  # derived from lay.int_weights on every call (atom_forces)
        inter.vecscales = lay.vecscales if order >= 1 else None
        inter.quadscales = lay.quadscales if order >= 2 else None
        inter.ones_input = int(network.nf_in) == 1
        atoms = []
        for wl in list(block)[1:]:
            base = wl.base_layer if resnet else wl
            nf_out = wl.res_layer.out_features if resnet else base.out_features
            al = _AtomLayer(base.in_features, base.out_features, nf_out, resnet)
            al.base = base
            if resnet:
                al.res = wl.res_layer
                if wl.needs_size_adjust:
                    al.adjust = wl.adjust_layer
            atoms.append(al)
        if resnet:
            int_res: torch.nn.Module = wrapped.res_layer
            int_adjust: torch.nn.Module = wrapped.adjust_layer if wrapped.needs_size_adjust else torch.nn.Identity()
        else:
            int_res, int_adjust = torch.nn.Identity(), torch.nn.Identity()
        self.block = _Block(inter, atoms, resnet, int_res, int_adjust)
        self.head = energy.layers[1]   # the read-out of the block's features; the input's has no force
        self.entropy_head = entropy.layers[1] if entropy is not None else None
        self.hard_cutoff = float(lay.sensitivity.hard_max_dist)

    def head_weights(self, temperature: Tensor, mol_index: Tensor) -> Tensor:
        """(N, nf_out) the read-out weight of each real atom of a temperature-aware model: A's plus tau B's,
        with tau from its frame's temperature ``temperature`` (n_molecules, 1) K; ``mol_index`` (N,) frames."""
        tau = (temperature.reshape(-1).to(self.head.weight.dtype) - self.t_ref) / self.t_scale
        return self.head.weight + tau[mol_index].unsqueeze(1) * self.entropy_head.weight

    def atom_forces(self, features: Tensor, nbr: Tensor, vec: Tensor, r: Tensor,
                    head_weight: Tensor | None = None) -> Tensor:
        """Forces (N, 3) on the batch's real atoms from their input features (N, nf_in) and their neighbour
        table: ``nbr`` (N, K) (empty slots = N), the slots' vectors r_j - r_i (3, N, K) and distances (N, K),
        angstrom, with empty slots at twice the cutoff (see :class:`TableFromPairs`). ``head_weight``: the
        read-out weight per atom (N, nf_out) (:meth:`head_weights`); None: the energy read-out's, for all.

        Every term but the final scatter belongs to one row (bead) of the table, so large batches are
        worked through in blocks of rows (:data:`ROW_BLOCK_ELEMENTS`): on a CPU, tensors above a few tens
        of MB come fresh from the operating system on every allocation, page by page, several times slower."""
        n = features.shape[0]
        features = features.to(self.head.weight.dtype)
        lay = self.layer
        inter = self.block.interaction
        per_row = max(1, nbr.shape[1] * inter.n_dist * (1 if inter.ones_input else inter.nf_in))
        rows = max(1, ROW_BLOCK_ELEMENTS // per_row) if features.device.type == "cpu" else n
        inter.weights = lay.int_weights.permute(0, 2, 1).reshape(lay.n_dist * lay.nf_in, lay.nf_out)
        grad = torch.zeros(n + 1, 3, dtype=features.dtype, device=features.device)
        own = []
        try:
            for start in range(0, n, rows):
                block = slice(start, min(start + rows, n))
                head = self.head.weight if head_weight is None else head_weight[block]
                gx, gy, gz = _slot_gradient(self.block, features, vec[:, block], r[block], nbr[block], head,
                                            features[block])
                # each slot's vector r_j - r_i: dE/dr_j = +g (scattered; empty slots land on row N), dE/dr_i = -g
                slot_grad = torch.stack([gx, gy, gz], dim=2)  # (rows, K, 3)
                grad = grad.index_add(0, nbr[block].reshape(-1), slot_grad.reshape(-1, 3))
                own.append(slot_grad.sum(dim=1))
        finally:
            inter.weights = None   # no reference to this call's graph outlives it
        return torch.cat(own) - grad[:n]   # -dE/dr

    def forward(self, features: Tensor, nbr: Tensor, vec: Tensor, r: Tensor, real_atoms: Tensor,
                n_molecules: int, n_atoms_max: int, temperature: Tensor | None = None,
                mol_index: Tensor | None = None) -> Tensor:
        """Forces (n_molecules, n_atoms_max, 3), zero on padding atoms, as hippynn's -dE/dR; a model with
        an entropy read-out takes each frame's ``temperature`` (n_molecules, 1) K and ``mol_index`` (N,)."""
        head = None if self.entropy_head is None else self.head_weights(temperature, mol_index)
        f = self.atom_forces(features, nbr, vec, r, head)
        out = f.new_zeros(n_molecules * n_atoms_max, 3).index_copy(0, real_atoms, f)
        return out.reshape(n_molecules, n_atoms_max, 3)


def _slot_gradient(block: _Block, features: Tensor, vec: Tensor, r: Tensor, nbr: Tensor,
                   head_weight: Tensor, row_features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The slot gradients of :meth:`openmm_cgnn.export._Block.output_and_slot_gradient`, for autograd to
    differentiate once with respect to the weights (the sensitivities come from the block's interaction,
    :class:`_SensitivityAndSlope` in training). For a block of rows: ``vec``, ``r``, ``nbr`` and
    ``row_features`` are the rows', ``features`` every bead's."""
    _, gx, gy, gz = block.output_and_slot_gradient(features, vec, r, nbr, head_weight, row_features)
    return gx, gy, gz


class TableFromPairs(torch.nn.Module):
    """A neighbour table (``nbr`` (N, K), empty slots = N; slot vectors r_j - r_i (3, N, K); distances
    (N, K)) from a hippynn full pair list (``pair_coord`` = r[first] - r[second] + periodic offset):
    for any pair indexer. N: the batch's real atoms."""

    def __init__(self, hard_cutoff: float):
        super().__init__()
        self.hard_cutoff = float(hard_cutoff)

    def forward(self, features: Tensor, pair_first: Tensor, pair_second: Tensor, pair_coord: Tensor):
        n_atoms = features.shape[0]
        with torch.no_grad():
            order = torch.argsort(pair_first)
            first = pair_first[order]
            counts = torch.bincount(first, minlength=n_atoms)
            k = max(int(counts.max()), 1) if first.numel() else 1
            start = torch.cumsum(counts, 0) - counts
            flat = first * k + (torch.arange(first.shape[0], device=first.device) - start[first])
            nbr = torch.full((n_atoms * k,), n_atoms, dtype=torch.long, device=first.device)
            nbr[flat] = pair_second[order]
            vec = pair_coord.new_zeros(3, n_atoms * k)
            vec[:, flat] = -pair_coord.detach()[order].t()
            nbr = nbr.reshape(n_atoms, k)
            vec, r = park_empty_slots(vec.reshape(3, n_atoms, k), nbr == n_atoms, 2.0 * self.hard_cutoff)
        return nbr, vec, r


class TableFromSlots(torch.nn.Module):
    """The neighbour table (as :class:`TableFromPairs`) of a batch from the cached per-frame tables
    ``slot_j`` (B, N_max, K) and ``slot_shift`` (B, N_max, K, 3) of :mod:`openmm_cgnn.pair_cache`."""

    def __init__(self, hard_cutoff: float):
        super().__init__()
        self.hard_cutoff = float(hard_cutoff)

    def forward(self, coordinates: Tensor, cell: Tensor, real_atoms: Tensor, inv_real_atoms: Tensor,
                slot_j: Tensor, slot_shift: Tensor):
        with torch.no_grad():
            n_mol, n_max, k = slot_j.shape
            n_atoms = real_atoms.shape[0]
            local = slot_j.reshape(n_mol * n_max, k)[real_atoms].long()  # (N, K), -1 = empty
            empty = local < 0
            mol = torch.div(real_atoms, n_max, rounding_mode="floor")
            nbr = inv_real_atoms[(mol * n_max).unsqueeze(1) + local.clamp(min=0)]
            nbr = nbr.masked_fill_(empty, n_atoms)
            pos = coordinates.detach().reshape(n_mol * n_max, 3)[real_atoms]
            pos_pad = torch.cat([pos, pos.new_zeros(1, 3)])
            shift = slot_shift.reshape(n_mol * n_max, k, 3)[real_atoms].to(pos.dtype)
            images = torch.bmm(shift, cell.detach()[mol].to(pos.dtype))  # (N, K, 3)
            vec = (pos_pad[nbr] - pos.unsqueeze(1) + images).permute(2, 0, 1)
            vec, r = park_empty_slots(vec, empty, 2.0 * self.hard_cutoff)
        return nbr, vec, r


def explicit_force_node(name: str, network_node: Any, henergy_node: Any, padding_indexer: Any, pairs: Any = None,
                        positions: Any = None, cell: Any = None, features: Any = None, thermal: Any = None,
                        hentropy_node: Any = None, temperature: Any = None) -> Any:
    """A hippynn node computing :class:`ExplicitForces` of ``network_node`` (its module, by reference) and
    ``henergy_node``, with the same index state (and the same database name, ``forces``) as the
    positions' gradient that ``MultiGradientNode`` makes.

    ``features``: the network's input features node (default: the padding indexer's one-hot types; the
    "input" form of a temperature-aware model gives its [types, tau] node). A "split" temperature-aware
    model gives ``thermal`` (its :class:`~openmm_cgnn.thermal.TemperatureScale`), its second read-out
    ``hentropy_node`` and the per-frame ``temperature`` input node.

    The neighbours come from ``pairs`` (a hippynn pair indexer) or, when it is None, from the cached
    tables ``slot_j``/``slot_shift`` of the database (:func:`openmm_cgnn.pair_cache.add_slot_arrays`)
    with ``positions`` and ``cell``.
    """
    from hippynn.graphs.indextypes import IdxType
    from hippynn.graphs.nodes.base import MultiNode, SingleNode

    from .pair_cache import CachedPairArray

    network = network_node.torch_module
    hard = float(network.dist_hard_max)
    features = padding_indexer.indexed_features if features is None else features

    class NeighbourTable(MultiNode):
        _output_names = ("nbr", "vec", "r")
        _output_index_states = (None, None, None)

    if pairs is not None:
        NeighbourTable._input_names = ("features", "pair_first", "pair_second", "pair_coord")
        table = NeighbourTable(f"{name}.table", (features, pairs.pair_first,
                                                  pairs.pair_second, pairs.pair_coord),
                               module=TableFromPairs(hard))
    else:
        NeighbourTable._input_names = ("coordinates", "cell", "real_atoms", "inv_real_atoms", "slot_j", "slot_shift")
        arrays = tuple(CachedPairArray(name=f"{name}.{key}", db_name=key) for key in ("slot_j", "slot_shift"))
        table = NeighbourTable(f"{name}.table", (positions, cell, padding_indexer.real_atoms,
                                                  padding_indexer.inv_real_atoms, *arrays),
                               module=TableFromSlots(hard))

    split = hentropy_node is not None

    class ExplicitForceNode(SingleNode):
        _index_state = IdxType.MolAtom
        _input_names = ("features", "nbr", "vec", "r", "real_atoms", "n_molecules", "n_atoms_max") + (
            ("temperature", "mol_index") if split else ())

    # the export's layers that ExplicitForces builds (and fills with hippynn's) draw initial weights: keep
    # the random stream (batch order, ...) what it is with autograd forces
    with torch.random.fork_rng(devices=[]):
        module = (ExplicitForces(network, henergy_node.torch_module, hentropy_node.torch_module, thermal.t_ref,
                                 thermal.t_scale) if split else ExplicitForces(network, henergy_node.torch_module))
    parents = (features, table.nbr, table.vec, table.r, padding_indexer.real_atoms,
               padding_indexer.n_molecules, padding_indexer.n_atoms_max) + (
        (temperature, padding_indexer.mol_index) if split else ())
    node = ExplicitForceNode(name, parents, module=module)
    node.db_name = "forces"
    return node
