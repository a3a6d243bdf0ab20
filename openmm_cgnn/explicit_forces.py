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

from .export import _AtomLayer, _Block, _Interaction

#: what :func:`supports_explicit_forces` accepts: one interaction block of these network classes
_SENSITIVITIES = ("InverseSensitivityModule", "GaussianSensitivityModule")


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


def _tensor_order(layer: torch.nn.Module) -> int:
    from hippynn.layers.hiplayers.interactions import InteractLayerQuad, InteractLayerVec

    if isinstance(layer, InteractLayerQuad):
        return 2
    return 1 if isinstance(layer, InteractLayerVec) else 0


class ExplicitForces(torch.nn.Module):
    """Forces (n_molecules, n_atoms_max, 3) of a one-block hippynn network with an HEnergy read-out,
    written out by hand, differentiable with respect to the network's weights (not the positions).

    The hippynn modules are held by reference: every parameter is hippynn's own Parameter object.
    """

    def __init__(self, network: torch.nn.Module, energy: torch.nn.Module):
        super().__init__()
        why = explicit_forces_unsupported(network, energy)
        if why is not None:
            raise NotImplementedError(f"explicit forces are not available for this network: {why}")
        # registered first, so that every parameter is named (and moved between devices) as in hippynn's modules
        self.network = network
        self.energy = energy
        resnet = bool(network.resnet)
        block = network.blocks[0]
        wrapped = block[0]
        lay = wrapped.base_layer if resnet else wrapped
        self.layer = lay   # hippynn's interaction layer: its int_weights are reshaped on every call
        order = _tensor_order(lay)
        inter = _Interaction(lay.nf_in, lay.nf_out, lay.n_dist, order, float(lay.sensitivity.hard_max_dist),
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
        self.hard_cutoff = float(lay.sensitivity.hard_max_dist)

    def slot_table(self, n_atoms: int, pair_first: Tensor, pair_second: Tensor,
                   pair_coord: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The pair list (full: each pair in both directions) as a padded neighbour table: ``nbr`` (N, K)
        (empty slots = N), the slots' pair vectors (3, N, K) and distances (N, K); empty slots lie at twice
        the cutoff along x, where every term is zero. N = ``n_atoms`` (all real atoms of the batch)."""
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
            vec[0] = 2.0 * self.hard_cutoff
            vec[:, flat] = pair_coord[order].t().to(vec.dtype)
            vec = vec.reshape(3, n_atoms, k)
            r = torch.sqrt(torch.square(vec).sum(dim=0))
        return nbr.reshape(n_atoms, k), vec, r

    def atom_forces(self, features: Tensor, pair_first: Tensor, pair_second: Tensor, pair_coord: Tensor) -> Tensor:
        """Forces (N, 3) on the batch's real atoms from their input features (N, nf_in) and the full pair
        list (``pair_coord`` = r[first] - r[second] + periodic offset, angstrom)."""
        n = features.shape[0]
        features = features.to(self.head.weight.dtype)
        nbr, vec, r = self.slot_table(n, pair_first, pair_second, pair_coord.detach())
        lay = self.layer
        inter = self.block.interaction
        inter.weights = lay.int_weights.permute(0, 2, 1).reshape(lay.n_dist * lay.nf_in, lay.nf_out)
        try:
            _, gx, gy, gz = self.block.output_and_slot_gradient(features, vec, r, nbr, self.head.weight,
                                                                differentiable=True)
        finally:
            inter.weights = None   # no reference to this call's graph outlives it
        # dE/d(pair vector) of each slot: +g on its row's atom (first), -g on its neighbour (second)
        slot_grad = torch.stack([gx, gy, gz], dim=2)  # (N, K, 3)
        spread = torch.zeros(n + 1, 3, dtype=slot_grad.dtype, device=slot_grad.device).index_add(
            0, nbr.reshape(-1), slot_grad.reshape(-1, 3))
        return spread[:n] - slot_grad.sum(dim=1)

    def forward(self, features: Tensor, pair_first: Tensor, pair_second: Tensor, pair_coord: Tensor,
                real_atoms: Tensor, n_molecules: int, n_atoms_max: int) -> Tensor:
        """Forces (n_molecules, n_atoms_max, 3), zero on padding atoms, as hippynn's -dE/dR."""
        f = self.atom_forces(features, pair_first, pair_second, pair_coord)
        out = f.new_zeros(n_molecules * n_atoms_max, 3).index_copy(0, real_atoms, f)
        return out.reshape(n_molecules, n_atoms_max, 3)


def explicit_force_node(name: str, network_node: Any, henergy_node: Any, padding_indexer: Any, pairs: Any) -> Any:
    """A hippynn node computing :class:`ExplicitForces` of ``network_node`` (its module, by reference) and
    ``henergy_node``, with the same index state (and the same database name, ``forces``) as the
    positions' gradient that ``MultiGradientNode`` makes."""
    from hippynn.graphs.indextypes import IdxType
    from hippynn.graphs.nodes.base import SingleNode

    class ExplicitForceNode(SingleNode):
        _index_state = IdxType.MolAtom
        _input_names = ("features", "pair_first", "pair_second", "pair_coord", "real_atoms", "n_molecules",
                        "n_atoms_max")

    module = ExplicitForces(network_node.torch_module, henergy_node.torch_module)
    parents = (padding_indexer.indexed_features, pairs.pair_first, pairs.pair_second, pairs.pair_coord,
               padding_indexer.real_atoms, padding_indexer.n_molecules, padding_indexer.n_atoms_max)
    node = ExplicitForceNode(name, parents, module=module)
    node.db_name = "forces"
    return node
