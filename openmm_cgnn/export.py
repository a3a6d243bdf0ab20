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
kJ/mol happen only in :meth:`CGPotential.energy_of_layout`.

Neighbours live in a table of fixed capacity (N beads x K slots, full list), filled every call by a
cell search over a fixed grid written in TorchScript: every shape depends only on N and on the
layout chosen by :meth:`CGPotential.configure`, and nothing in a step reads a tensor value on the host,
so openmm-torch can capture the step in a CUDA graph. The capacity K is recorded at export from the
training data (the most neighbours any bead had, plus a margin); an overflow makes the energy NaN.
The box must be wider than twice the cutoff along each perpendicular width. Sensitivity exponents are
floored at :data:`EXPONENT_FLOOR` (smaller values and their products would underflow into slow denormals).

Forces: for a network of one interaction block (every preset) :meth:`CGPotential.energy_from_table`
computes the gradient by hand, as batched matrix products over the neighbour table, rather than by
autograd through the (N, K, n_dist) sensitivity tensors; the energy it returns differentiates to that
gradient, so openmm-torch's force call is unchanged. Deeper networks use autograd.
The exported file carries a ``metadata.json`` extra file (cutoff, bead type names, dtype, units,
neighbour capacity, prior parameters, training metadata).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor


from .files import atomic_write, check_output_path
from .prior import PriorParams
from .units import ANGSTROM_PER_NM, KJ_PER_KCAL
from .volume import VolumeTerm, VolumeTermParams  # volume term U_V(V, N): see openmm_cgnn.volume

EXPORT_FORMAT = "openmm-cgnn/torchscript-cg-potential"
EXPORT_FORMAT_VERSION = 2  # 2: fixed-capacity neighbour table (1 used vesin-torch)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# How far (linear) the box may shrink below the one the layout was configured for before the cell grid
# is too fine for the cutoff and the model reports an overflow (NPT runs then get a new layout).
COMPRESSION_MARGIN = 0.1
# The neighbour capacity recorded at export: the most neighbours any bead had in the training data,
# times this factor, plus NEIGHBOUR_SLACK (denser states than the training data then still fit).
NEIGHBOUR_MARGIN = 1.15
NEIGHBOUR_SLACK = 8
# On a CPU the neighbour table is reused from a list of neighbours within cutoff + this skin (nm),
# searched again when a bead has moved half of it.
VERLET_SKIN_NM = 0.1
# Sensitivity exponents are floored here: exp(-40) = 4e-18 keeps every product of a sensitivity with the
# cutoff factor, its slope and the network's gradients far above the denormal range of float32 (1e-38),
# where CPUs are one to two orders of magnitude slower; terms this small change nothing measurable.
EXPONENT_FLOOR = -40.0


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for a 2-D ``index`` (N, K) -> (N, K, F), through ``index_select``: its backward is an
    atomic ``index_add`` rather than the sort-based accumulation of advanced indexing, which dominated
    the CUDA step time (profiled on an H200: ~85 % of a force evaluation)."""
    return torch.index_select(x, 0, index.reshape(-1)).reshape(index.shape[0], index.shape[1], x.shape[1])


def unit_components(vec: Tensor, r: Tensor, order: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The tensor components of each slot of a neighbour table, as HIP-NN-TS uses them: (N, C, K) with
    C = 1, 4 or 9 for ``order`` 0, 1, 2 (1; the unit vector u; traceless u u in hippynn's five
    components), and u's planes (N, K) and 1/r. ``vec`` (3, N, K) and ``r`` (N, K) in any one unit."""
    inv_r = 1.0 / r
    x = vec[0] * inv_r
    y = vec[1] * inv_r
    z = vec[2] * inv_r
    comps = [torch.ones_like(r)]
    if order >= 1:
        comps += [x, y, z]
    if order >= 2:
        xx = x * x
        yy = y * y
        tr = (xx + yy + z * z) / 3.0
        comps += [xx - tr, x * y, x * z, yy - tr, y * z]
    return torch.stack(comps, dim=1), x, y, z, inv_r


def input_features(types: Tensor, n_types: int, dtype: torch.dtype, extra: Optional[Tensor] = None) -> Tensor:
    """Every bead's input features (N, n_types [+ 1]): its one-hot type, and ``extra`` (a number, e.g. the
    scaled temperature of a model trained with it as an input) appended when given."""
    features = torch.nn.functional.one_hot(types, n_types).to(dtype)
    if extra is not None:
        column = extra.to(device=features.device, dtype=dtype).reshape(1, 1).expand(features.shape[0], 1)
        features = torch.cat([features, column], dim=1)
    return features


def cutoff_and_slope(r: Tensor, hard_cutoff: float) -> Tuple[Tensor, Tensor]:
    """hippynn's CosCutoff ``cos^2(pi r / 2 r_c)`` (zero beyond r_c) and its derivative with respect to r,
    both (N, K, 1) for distances ``r`` (N, K) in the unit of ``hard_cutoff``."""
    angle = (math.pi / 2 / hard_cutoff) * r
    inside = (r <= hard_cutoff).to(r.dtype)
    cut = (torch.square(torch.cos(angle)) * inside).unsqueeze(2)
    cut_slope = (torch.sin(2.0 * angle) * inside * (-math.pi / 2 / hard_cutoff)).unsqueeze(2)
    return cut, cut_slope


def park_empty_slots(vec: Tensor, empty: Tensor, distance: float) -> Tuple[Tensor, Tensor]:
    """``vec`` (3, N, K) with the ``empty`` (N, K) slots moved to ``distance`` along x, where every term of
    the model is zero, and the distances (N, K)."""
    vec = torch.where(empty.unsqueeze(0), torch.zeros_like(vec), vec)
    vec[0].masked_fill_(empty, distance)
    return vec, torch.sqrt(torch.square(vec).sum(dim=0))


def slot_gradient(along: List[Tensor], radial: Tensor, x: Tensor, y: Tensor, z: Tensor, inv_r: Tensor,
                  r: Tensor, order: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Each slot's dE/d r_ij (three (N, K) planes) from ``along`` (C planes (N, K): sum_d G[c, d] s_d),
    ``radial`` (N, K: sum_c Y_c sum_d G[c, d] s'_d = dE/dr at fixed direction) and the unit vector's
    planes (:func:`unit_components`): radial u + (w - (w.u) u) / r with w = sum_c along_c dY_c/du."""
    zero = torch.zeros_like(r)
    wx, wy, wz = zero, zero, zero
    if order >= 1:
        wx, wy, wz = along[1], along[2], along[3]
    if order >= 2:
        q0, q1, q2, q3, q4 = along[4], along[5], along[6], along[7], along[8]
        wx = wx + 2.0 * q0 * x + q1 * y + q2 * z
        wy = wy + q1 * x + 2.0 * q3 * y + q4 * z
        wz = wz + q2 * x + q4 * y
    w_along = (wx * x + wy * y + wz * z - radial * r) * inv_r  # grad = w / r + u * (radial - w.u / r)
    return wx * inv_r - w_along * x, wy * inv_r - w_along * y, wz * inv_r - w_along * z


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
        self.exponent_floor = EXPONENT_FLOOR
        self.n_comp = 1 if order == 0 else (4 if order == 1 else 9)
        self.ones_input = False  # True for the first layer of a one-type model: input features all 1
        self.mu = torch.nn.Parameter(torch.zeros(1, n_dist))
        self.sigma = torch.nn.Parameter(torch.zeros(1, n_dist))
        # hippynn stores int_weights as (n_dist, nf_out, nf_in); we keep them as the matrix it multiplies
        # the flattened environment with: (n_dist * nf_in, nf_out).
        self.weights = torch.nn.Parameter(torch.zeros(n_dist * nf_in, nf_out))
        self.selfint = torch.nn.Linear(nf_in, nf_out)
        self.vecscales = torch.nn.Parameter(torch.zeros(nf_out))
        self.quadscales = torch.nn.Parameter(torch.zeros(nf_out))
        # the two (N, K, n_dist) buffers of sensitivity_and_slope, sized by its first call for a table
        self.register_buffer("workspace", torch.zeros(0), persistent=False)

    def sensitivity(self, r: Tensor) -> Tensor:
        """(N, K) distances in angstrom -> (N, K, n_dist) sensitivities, as hippynn's
        InverseSensitivityModule: ``exp(-(1/r - 1/mu)^2 sigma^2 / 2) * cos^2(pi r / 2 r_c)``, zero beyond r_c."""
        # few passes over the (N, K, D) tensor: the cutoff factor and 1/r are computed per distance
        inv_r = (1.0 / r).unsqueeze(2)
        minus_half_sigma2 = -0.5 * torch.square(self.sigma)
        exponent = torch.square(inv_r - 1.0 / self.mu) * minus_half_sigma2
        cut = torch.cos((math.pi / 2) * r / self.hard_cutoff) ** 2
        cut = torch.where(r <= self.hard_cutoff, cut, torch.zeros_like(cut))
        # the exponent is floored: exp of large negative arguments, and products of such values, are
        # denormal numbers, an order of magnitude slower on CPUs; the floored terms are negligible
        return torch.exp(torch.clamp(exponent, min=self.exponent_floor)) * cut.unsqueeze(2)

    def sensitivity_and_slope(self, r: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, K) distances in angstrom -> the sensitivities (N, K, n_dist) of :meth:`sensitivity` and their
        derivatives with respect to r (per angstrom), both zero beyond r_c and in empty slots. No autograd:
        the (N, K, n_dist) work happens in place in two buffers kept between calls (``workspace``: a fresh
        buffer of that size costs page faults on every call, as much as two passes over it). The results
        are views of the workspace, valid until the next call."""
        inv_r = (1.0 / r).unsqueeze(2)
        sigma2 = torch.square(self.sigma)
        shape = [r.shape[0], r.shape[1], self.n_dist]
        size = shape[0] * shape[1] * shape[2]
        if self.workspace.numel() < 2 * size or self.workspace.dtype != r.dtype or self.workspace.device != r.device:
            # room for a slightly wider table too: the CPU's table is as wide as its fullest row
            self.workspace = torch.empty(2 * size + size // 4, dtype=r.dtype, device=r.device)
        offset = torch.sub(inv_r, 1.0 / self.mu, out=self.workspace[size : 2 * size].view(shape))
        gauss = torch.mul(offset, offset, out=self.workspace[:size].view(shape)).mul_(-0.5 * sigma2) \
            .clamp_(min=self.exponent_floor).exp_()
        cut, cut_slope = cutoff_and_slope(r, self.hard_cutoff)
        # d/dr = gauss * (cut * (1/r - 1/mu) sigma^2 / r^2 + cut'); where the floor holds, the first term
        # is below exp(EXPONENT_FLOOR) relative to the others: negligible, and cheaper than masking it
        slope = offset.mul_(sigma2).mul_(torch.square(inv_r) * cut).add_(cut_slope).mul_(gauss)
        return gauss.mul_(cut), slope

    def mix(self, env: Tensor, features: Tensor) -> Tuple[Tensor, Tensor]:
        """The layer's output (N, nf_out) from the environment ``env`` (N, n_comp, n_dist * nf_in) and
        the input features (N, nf_in); also the mixed environment (N, n_comp, nf_out) for :meth:`mix_gradient`."""
        n = env.shape[0]
        out = torch.matmul(env.reshape(n, self.n_comp, self.n_dist * self.nf_in), self.weights)  # (N, C, nf_out)
        total = out[:, 0, :] + self.selfint(features)
        if self.order >= 1:
            vec = out[:, 1:4, :]
            total = total + torch.sqrt(torch.square(vec).sum(dim=1) + self.cusp_reg) * self.vecscales.unsqueeze(0)
        if self.order >= 2:
            q = out[:, 4:9, :]
            qnorm = 2 * (torch.square(q).sum(dim=1) + q[:, 0, :] * q[:, 3, :])
            total = total + torch.sqrt(qnorm + self.cusp_reg) * self.quadscales.unsqueeze(0)
        return total, out

    def mix_gradient(self, grad_total: Tensor, out: Tensor) -> Tensor:
        """The gradient with respect to the environment (N, n_comp, n_dist * nf_in) given the gradient
        ``grad_total`` (N, nf_out) with respect to :meth:`mix`'s output and its mixed environment ``out``."""
        parts = [grad_total.unsqueeze(1)]
        if self.order >= 1:
            vec = out[:, 1:4, :]
            norm = torch.sqrt(torch.square(vec).sum(dim=1) + self.cusp_reg)
            parts.append(vec * (grad_total * self.vecscales.unsqueeze(0) / norm).unsqueeze(1))
        if self.order >= 2:
            q = out[:, 4:9, :]
            norm = torch.sqrt(2 * (torch.square(q).sum(dim=1) + q[:, 0, :] * q[:, 3, :]) + self.cusp_reg)
            scale = (grad_total * self.quadscales.unsqueeze(0) / norm).unsqueeze(1)
            # d sqrt(2 (|q|^2 + q0 q3) + cusp) / dq_c = (2 q_c + [c = 0] q3 + [c = 3] q0) / norm
            cross = torch.stack([q[:, 3, :], torch.zeros_like(q[:, 0, :]), torch.zeros_like(q[:, 0, :]),
                                 q[:, 0, :], torch.zeros_like(q[:, 0, :])], dim=1)
            parts.append((2.0 * q + cross) * scale)
        grad_out = torch.cat(parts, dim=1)  # (N, C, nf_out)
        return torch.matmul(grad_out, self.weights.t())

    def forward(self, features: Tensor, r: Tensor, comps: Tensor, nbr: Tensor) -> Tensor:
        """features (N, nf_in); r (N, K) angstrom; comps (N, >= n_comp, K); nbr (N, K), empty slots = N."""
        n = features.shape[0]
        k_max = nbr.shape[1]
        sense = self.sensitivity(r)  # (N, K, D); zero in empty slots (r beyond the cutoff)
        # Environment env[i, c, d, f] = sum over i's neighbours k of comp[c] * sense[d] * features_j[f]
        # (hippynn's envsum of the stacked sensitivities), as one batched matrix product per bead over
        # the neighbour table. Of the two ways to group the product, the one that materialises the
        # smaller per-slot tensor is taken (the first layer has only n_types input features).
        comp = comps[:, : self.n_comp, :]
        if self.ones_input:  # one bead type, first layer: every neighbour's one-hot feature is 1
            env = torch.bmm(comp, sense)  # (N, C, D)
        else:
            f_pad = _gather_rows(torch.cat([features, features.new_zeros(1, self.nf_in)], 0), nbr)  # (N, K, nf_in)
            if self.nf_in <= self.n_comp:
                sf = (sense.unsqueeze(3) * f_pad.unsqueeze(2)).reshape(n, k_max, self.n_dist * self.nf_in)
                env = torch.bmm(comp, sf)  # (N, C, D*nf_in)
            else:
                stacked = (comp.unsqueeze(2) * sense.transpose(1, 2).unsqueeze(1)).reshape(
                    n, self.n_comp * self.n_dist, k_max)
                env = torch.bmm(stacked, f_pad)  # (N, C*D, nf_in)
        total, _ = self.mix(env, features)
        return total


def _softplus_slope(pre: Tensor) -> Tensor:
    """The derivative of torch's softplus (beta 1, threshold 20: linear above) at ``pre``."""
    return torch.where(pre > 20.0, torch.ones_like(pre), torch.sigmoid(pre))


class _AtomLayer(torch.nn.Module):
    """A dense layer, optionally in hippynn's ResNet wrapper: ``res(softplus(W x + b)) + adjust(x)``."""

    __constants__ = ["resnet", "has_adjust"]  # TorchScript compiles only the branches these select

    def __init__(self, nf_in: int, nf_middle: int, nf_out: int, resnet: bool):
        super().__init__()
        self.resnet = resnet
        self.has_adjust = resnet and nf_in != nf_out
        self.base = torch.nn.Linear(nf_in, nf_middle)
        self.res = torch.nn.Linear(nf_middle, nf_out) if resnet else torch.nn.Identity()
        self.adjust = torch.nn.Linear(nf_in, nf_out, bias=False) if self.has_adjust else torch.nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_keeping(x)[0]

    def forward_keeping(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The output and the pre-activation ``base(x)`` that :meth:`input_gradient` needs."""
        pre = self.base(x)
        y = torch.nn.functional.softplus(pre)
        if self.resnet:
            return self.res(y) + self.adjust(x), pre
        return y, pre

    def input_gradient(self, grad_out: Tensor, pre: Tensor) -> Tensor:
        """The gradient with respect to the input (N, nf_in) from that w.r.t. the output (N, nf_out)."""
        if self.resnet:
            grad_pre = torch.matmul(grad_out, self.res.weight) * _softplus_slope(pre)
            grad_in = torch.matmul(grad_pre, self.base.weight)
            if self.has_adjust:
                return grad_in + torch.matmul(grad_out, self.adjust.weight)
            return grad_in + grad_out
        return torch.matmul(grad_out * _softplus_slope(pre), self.base.weight)


class _Block(torch.nn.Module):
    """An interaction layer, in hippynn's ResNet wrapper or followed by softplus, then the block's atom layers."""

    __constants__ = ["resnet"]

    def __init__(self, interaction: _Interaction, atom_layers: List[_AtomLayer], resnet: bool,
                 int_res: torch.nn.Module, int_adjust: torch.nn.Module):
        super().__init__()
        self.interaction = interaction
        self.resnet = resnet
        self.int_res = int_res          # Linear(nf_middle, nf_out) with resnet, else Identity
        self.int_adjust = int_adjust    # Linear(nf_in, nf_out, bias=False) when the sizes differ, else Identity
        self.atom_layers = torch.nn.ModuleList(atom_layers)

    def forward(self, features: Tensor, r: Tensor, comps: Tensor, nbr: Tensor) -> Tensor:
        y = self.interaction(features, r, comps, nbr)
        if self.resnet:
            x = self.int_res(torch.nn.functional.softplus(y)) + self.int_adjust(features)
        else:
            x = torch.nn.functional.softplus(y)
        for layer in self.atom_layers:
            x = layer(x)
        return x

    def output_and_slot_gradient(self, features: Tensor, vec: Tensor, r: Tensor, nbr: Tensor, head_weight: Tensor,
                                 row_features: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """For a network of this one block: its output features (N, nf_out) and the gradient of the read-out
        (output x ``head_weight`` (1, nf_out), summed over beads) with respect to each slot's displacement
        r_j - r_i, as three (N, K) planes (x, y, z) per angstrom. ``features`` (N, nf_in) one-hot input;
        ``vec`` (3, N, K) and ``r`` (N, K) angstrom; ``nbr`` (N, K), empty slots = N.

        With u = r_ij / r, tensor components Y_c(u) and sensitivities s_d(r), the environment is
        env[i, c, d] = sum_k Y_c s_d; G = d(read-out)/d env comes from the per-bead layers by hand; then per
        slot dE/d r_ij = (sum_c Y_c sum_d G[c, d] s'_d) u + (w - (w.u) u) / r, with
        w = sum_c (sum_d G[c, d] s_d) dY_c/du. Every per-slot product over the sensitivities is a batched
        matrix product. ``row_features``: for a table of some beads' rows (training in blocks of rows), their
        input features, with ``features`` those of every bead (the neighbours')."""
        inter = self.interaction
        rows = features if row_features is None else row_features
        n = r.shape[0]
        k_max = r.shape[1]
        comp, x, y, z, inv_r = unit_components(vec, r, inter.order)  # (N, C, K), planes (N, K)
        sense, slope = inter.sensitivity_and_slope(r)  # (N, K, D)
        if not inter.ones_input:  # each slot's sensitivities times its neighbour's input features (N, K, D*F)
            f_pad = _gather_rows(torch.cat([features, features.new_zeros(1, inter.nf_in)], 0), nbr).unsqueeze(2)
            sense = (sense.unsqueeze(3) * f_pad).reshape(n, k_max, inter.n_dist * inter.nf_in)
            slope = (slope.unsqueeze(3) * f_pad).reshape(n, k_max, inter.n_dist * inter.nf_in)
        env = torch.bmm(comp, sense)  # (N, C, D*F)
        output, grad_env = self.output_and_env_gradient(rows, env, head_weight)
        # (N, C, K) products: for these shapes several times faster than the (N, K, C) ones
        along = torch.bmm(grad_env, sense.transpose(1, 2)).unbind(1)  # sum_d G[c, d] s_d, C planes (N, K)
        radial = (torch.bmm(grad_env, slope.transpose(1, 2)) * comp).sum(dim=1)  # dE/dr (N, K)
        gx, gy, gz = slot_gradient(along, radial, x, y, z, inv_r, r, inter.order)
        return output, gx, gy, gz

    def output_and_env_gradient(self, features: Tensor, env: Tensor, head_weight: Tensor) -> Tuple[Tensor, Tensor]:
        """For a network of this one block: the block's output features (N, nf_out) from the input features
        and the interaction's environment ``env`` (N, n_comp, n_dist * nf_in), and the gradient with
        respect to ``env`` of the read-out (output features x ``head_weight`` (1, nf_out)) summed over
        beads, by hand: the chain rule through the per-bead layers, a few (N, features) products."""
        y, out = self.interaction.mix(env, features)
        if self.resnet:
            x = self.int_res(torch.nn.functional.softplus(y)) + self.int_adjust(features)
        else:
            x = torch.nn.functional.softplus(y)
        pres: List[Tensor] = []
        for layer in self.atom_layers:
            x, pre = layer.forward_keeping(x)
            pres.append(pre)
        grad = head_weight.expand(x.shape[0], x.shape[1])
        for k in range(len(pres) - 1, -1, -1):
            for j, atom_layer in enumerate(self.atom_layers):  # TorchScript indexes a ModuleList only in a loop
                if j == k:
                    grad = atom_layer.input_gradient(grad, pres[k])
        if self.resnet:
            grad = torch.matmul(grad, self.int_res.weight)
        grad = grad * _softplus_slope(y)
        return x, self.interaction.mix_gradient(grad, out)


class CGPotential(torch.nn.Module):
    """TorchScript-able CG potential: HIP-NN(-TS) network + repulsive prior.

    ``forward(positions (N, 3) nm, boxvectors (3, 3) nm, rows) -> energy (scalar, kJ/mol)``, the
    signature of openmm-torch's ``TorchForce`` with periodic boundary conditions. Inputs are cast
    to the module's dtype (chosen at export). Bead types are the buffer ``types`` (N,) of 0-based
    indices into ``type_names``, set with :meth:`set_types`; with a single bead type an empty buffer
    means "every bead is that type" and any number of beads works.

    Static shapes, no host synchronisation. Neighbours live in a fixed-capacity table (N, K) filled
    by a cell search over a fixed grid; :meth:`configure` sizes the grid and the capacities for a bead
    count and a box (the only place that reads tensor values on the host). ``forward`` calls it by
    itself when the bead count changes; after that every call has the same shapes and the same
    operations, which is what CUDA graph capture needs. When a table overflows (a bead with more
    than K neighbours, a cell with more beads than it holds, or a box compressed so far that a cell
    is narrower than the cutoff) the energy and forces are NaN: never silently wrong. Call
    :meth:`overflowed` to tell that apart from a blow-up, and :meth:`configure` with a larger
    capacity to go on.
    """

    def __init__(self, n_types: int, blocks: List[_Block], heads: List[torch.nn.Linear], network_cutoff_nm: float,
                 prior: PriorParams | None, max_order: int, dtype: torch.dtype = torch.float32,
                 neighbour_capacity: int = 0):
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
        # neighbours per bead (full list) the table holds by default; 0: estimate from the density
        self.neighbour_capacity = int(neighbour_capacity)
        self.compression_margin = COMPRESSION_MARGIN
        self.verlet_skin_nm = VERLET_SKIN_NM
        # the configured layout (set by configure): bead count, capacities, grid
        self.n_configured = -1
        self.table_capacity = 0
        self.cell_capacity = 0
        self.n_cells = 0
        self.triclinic = True  # False: rectangular box, a shorter minimum image
        self.register_buffer("grid", torch.ones(3, dtype=torch.long))              # cells along a, b, c
        self.register_buffer("cell_neighbours", torch.zeros(0, 0, dtype=torch.long))  # (n_cells, n_offsets)
        self.register_buffer("cell_shifts", torch.zeros(0, 0, 3))  # (n_cells, n_offsets, 3) box vectors
        self.exact_images = False  # True: >= 3 cells per axis, images from the cell offsets
        # the CPU's Verlet list (see configure): neighbours within cutoff + skin, the positions and box
        # it was searched at, and whether that search overflowed
        self.reuse_on_cpu = False
        self.narrow_on_cpu = True  # False: the CPU runs the GPU's step exactly (static shapes), for tests
        self.verlet_ready = False
        self.verlet_capacity = 0
        self.register_buffer("verlet_list", torch.zeros(0, 0, dtype=torch.long))
        self.register_buffer("verlet_positions", torch.zeros(0, 3))
        self.register_buffer("verlet_box", torch.zeros(3, 3))
        self.register_buffer("verlet_overflow", torch.zeros((), dtype=torch.bool))
        self.register_buffer("types", torch.zeros(0, dtype=torch.long))
        # True: energy_from_table computes the forces by hand (a network of at most one interaction block,
        # whose input features do not move); False: by autograd through the whole network
        self.analytic_gradient = len(blocks) == 0 or (len(blocks) == 1 and len(heads) == 2)
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

    # -------------------------------------------------------------------------------------------
    # geometry (static shapes, no host synchronisation)
    # -------------------------------------------------------------------------------------------
    def _widths(self, box: Tensor) -> Tensor:
        """(3,) perpendicular widths of the box (rows a, b, c) in nm."""
        bc = torch.linalg.cross(box[1], box[2])
        ca = torch.linalg.cross(box[2], box[0])
        ab = torch.linalg.cross(box[0], box[1])
        vol = torch.abs(torch.dot(box[0], bc))
        return vol / torch.stack([torch.linalg.vector_norm(bc), torch.linalg.vector_norm(ca),
                                  torch.linalg.vector_norm(ab)])

    def _fractional(self, pos: Tensor, box: Tensor) -> Tensor:
        """(N, 3) fractional coordinates in [0, 1) of positions (N, 3) in a box with rows a, b, c."""
        bc = torch.linalg.cross(box[1], box[2])
        ca = torch.linalg.cross(box[2], box[0])
        ab = torch.linalg.cross(box[0], box[1])
        recip = torch.stack([bc, ca, ab], dim=1) / torch.dot(box[0], bc)  # columns: reciprocal vectors
        frac = torch.matmul(pos, recip)
        return frac - torch.floor(frac)

    def _minimum_image(self, dx: Tensor, dy: Tensor, dz: Tensor, box: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Displacement components (any shape, one tensor per axis: contiguous planes are several times
        faster on CPUs than a trailing axis of 3) reduced to their nearest periodic image, for a box in
        OpenMM's reduced (lower-triangular) form; exact below half the smallest width, as in OpenMM."""
        nz = torch.round(dz / box[2, 2])
        dz = dz - nz * box[2, 2]
        if self.triclinic:
            dy = dy - nz * box[2, 1]
            dx = dx - nz * box[2, 0]
        ny = torch.round(dy / box[1, 1])
        dy = dy - ny * box[1, 1]
        if self.triclinic:
            dx = dx - ny * box[1, 0]
        dx = dx - torch.round(dx / box[0, 0]) * box[0, 0]
        return dx, dy, dz

    def _displacements(self, pos: Tensor, box: Tensor, index: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Minimum-image components r_j - r_i, each shaped like ``index`` (N, M), of the beads
        ``j = index[i, m]`` (N = the padding bead at the origin) from bead i."""
        n = pos.shape[0]
        flat = index.reshape(-1)
        pad = pos.new_zeros(1)
        # index_select, not x[index]: its backward is an atomic index_add (see _gather_rows)
        dx = torch.index_select(torch.cat([pos[:, 0], pad]), 0, flat).reshape(index.shape) - pos[:, 0:1]
        dy = torch.index_select(torch.cat([pos[:, 1], pad]), 0, flat).reshape(index.shape) - pos[:, 1:2]
        dz = torch.index_select(torch.cat([pos[:, 2], pad]), 0, flat).reshape(index.shape) - pos[:, 2:3]
        return self._minimum_image(dx, dy, dz, box)

    @torch.jit.export
    def neighbour_table(self, pos: Tensor, box: Tensor) -> Tuple[Tensor, Tensor]:
        """Fixed-capacity neighbour table of the configured layout, searched afresh (the GPU path).

        :param pos: (N, 3) positions in nm; :param box: (3, 3) box rows in nm.
        :return: ``nbr`` (N, K) long, the neighbours of each bead within the cutoff (empty slots hold N),
            and ``overflow``, a 0-d bool tensor: True when the table cannot be trusted (a bead with more
            than K neighbours, a full cell, or cells narrower than the cutoff).
        """
        return self._search(pos, box, self.cutoff_nm, self.table_capacity)

    def _compact(self, cand: Tensor, inside: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        """Each row's candidates ``cand`` (N, M) where ``inside`` (N, M), packed into k slots (empty = N);
        and (N,) the number each row had (more than k: an overflow)."""
        n = cand.shape[0]
        position = torch.cumsum(inside, dim=1)  # (N, M) int64: 1-based rank among the row's neighbours
        count = position[:, -1].clone()  # position is reused in place below
        # slot k collects what is not a neighbour or does not fit, and is dropped
        dest = position.sub_(1).masked_fill_(torch.logical_not(inside), k).clamp_(max=k)
        nbr = torch.full((n, k + 1), n, dtype=torch.long, device=cand.device).scatter_(1, dest, cand)[:, :k]
        return nbr, count

    def _search(self, pos: Tensor, box: Tensor, cutoff: float, k: int) -> Tuple[Tensor, Tensor]:
        """Cell search over the configured grid: (N, k) neighbours within ``cutoff`` nm and the overflow flag."""
        # detached inputs rather than torch.no_grad(): inside openmm-torch the latter lost the position gradient
        pos = pos.detach()
        box = box.detach()
        n = pos.shape[0]
        device = pos.device
        cap = self.cell_capacity
        n_cells = self.n_cells
        # bead -> cell of the fixed grid, in fractional coordinates (any triclinic box)
        frac = self._fractional(pos, box)
        idx3 = torch.floor(frac * self.grid.to(pos.dtype)).to(torch.long)
        idx3 = torch.minimum(torch.clamp(idx3, min=0), self.grid - 1)
        cell = (idx3[:, 0] * self.grid[1] + idx3[:, 1]) * self.grid[2] + idx3[:, 2]
        # cells as rows of `cap` slots: sort beads by cell, rank within their cell
        order = torch.argsort(cell)
        cell_sorted = torch.index_select(cell, 0, order)
        counts = torch.zeros(n_cells, dtype=torch.long, device=device).scatter_add_(
            0, cell, torch.ones_like(cell))
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n, device=device) - torch.index_select(start, 0, cell_sorted)
        slot = torch.where(rank < cap, cell_sorted * cap + rank, torch.full_like(rank, n_cells * cap))
        table = torch.full((n_cells * cap + 1,), n, dtype=torch.long, device=device).scatter_(0, slot, order)
        table = table[: n_cells * cap].reshape(n_cells, cap)
        # candidates: every bead of the neighbouring cells, then those inside the cutoff
        cells_around = torch.index_select(self.cell_neighbours, 0, cell)  # (N, n_offsets)
        cand = torch.index_select(table, 0, cells_around.reshape(-1)).reshape(n, -1)  # (N, M)
        if self.exact_images:
            # >= 3 cells along every axis: the image of a candidate is the one its cell offset says, so
            # wrapped positions plus that shift give the displacement with no rounding. The padding
            # bead sits far away and the bead itself is the one candidate at distance 0.
            wrapped = torch.matmul(frac, box)
            far = torch.full((1,), 1.0e4, dtype=pos.dtype, device=device)
            shifts = torch.matmul(torch.index_select(self.cell_shifts, 0, cell), box)  # (N, n_offsets, 3)
            n_off = self.cell_neighbours.shape[1]
            flat = cand.reshape(-1)
            d2 = torch.zeros(n, n_off, cap, dtype=pos.dtype, device=device)
            for axis in range(3):
                x = wrapped[:, axis]
                d = torch.index_select(torch.cat([x, far]), 0, flat).reshape(n, n_off, cap) \
                    - x.reshape(n, 1, 1) + shifts[:, :, axis : axis + 1]
                d2 = d2 + d * d
            d2 = d2.reshape(n, -1)
            inside = (d2 < cutoff * cutoff) & (d2 > 0.0)
        else:
            dx, dy, dz = self._displacements(pos, box, cand)
            inside = (dx * dx + dy * dy + dz * dz < cutoff * cutoff) & (cand != n) \
                & (cand != torch.arange(n, device=device).unsqueeze(1))
        nbr, count = self._compact(cand, inside, k)
        widths = self._widths(box)
        too_narrow = (widths / self.grid.to(pos.dtype) < cutoff).any() | (widths <= 2.0 * cutoff).any()
        overflow = (count > k).any() | (counts > cap).any() | too_narrow
        return nbr, overflow

    def _slot_geometry(self, pos: Tensor, box: Tensor, nbr: Tensor) -> Tuple[Tensor, Tensor]:
        """Differentiable components r_j - r_i, stacked as (3, N, K), and distances (N, K) in nm of the
        table's slots; empty slots sit at twice the cutoff along x, where every term of the model is zero."""
        dx, dy, dz = self._displacements(pos, box, nbr)
        return park_empty_slots(torch.stack([dx, dy, dz]), nbr == pos.shape[0], 2.0 * self.cutoff_nm)

    @torch.jit.export
    def configure(self, n: int, box: Tensor, neighbour_capacity: int = 0) -> None:
        """Size the neighbour table and the cell grid for ``n`` beads in ``box`` ((3, 3) nm, rows).

        Raises if the box is narrower than twice the cutoff. ``neighbour_capacity`` (neighbours per bead,
        full list) overrides the model's own (recorded at export from the training data); both 0:
        estimated from the density with a margin. The grid leaves room for the box to shrink by
        ``compression_margin`` (linear) before the table reports an overflow.
        """
        box = box.detach().to(self._dtype_ref.dtype)
        widths = self._widths(box)
        if bool((widths <= 2.0 * self.cutoff_nm).any()):
            width = str(float(torch.round(widths.min(), decimals=5)))
            raise RuntimeError("CGPotential: the periodic box is too small for the model: its smallest "
                               "perpendicular width (" + width + " nm) must exceed twice the cutoff ("
                               + self.cutoff_text + " nm); use a larger system")
        if bool(box[0, 1] != 0) or bool(box[0, 2] != 0) or bool(box[1, 2] != 0):
            raise RuntimeError("CGPotential: box vectors must be in OpenMM's reduced form (a along x, b in the "
                               "xy plane), as OpenMM gives them")
        volume = float(torch.abs(torch.det(box)))
        density = float(n) / volume
        sphere = 4.0 / 3.0 * math.pi * self.cutoff_nm ** 3
        if neighbour_capacity <= 0:
            neighbour_capacity = self.neighbour_capacity
        if neighbour_capacity <= 0:
            neighbour_capacity = int(math.ceil(1.3 * density * sphere)) + 8
        neighbour_capacity = min(neighbour_capacity, max(n - 1, 1))
        # On a CPU the table is reused between steps from a list of neighbours within cutoff + skin (a
        # Verlet list), searched again once a bead has moved half the skin; that needs room in the box.
        reach = self.cutoff_nm + self.verlet_skin_nm
        reuse = bool((widths * (1.0 - self.compression_margin) > 2.0 * reach).all())
        search_radius = reach if reuse else self.cutoff_nm
        grid: List[int] = []
        for d in range(3):
            grid.append(max(1, int(math.floor(float(widths[d]) * (1.0 - self.compression_margin) / search_radius))))
        n_cells = grid[0] * grid[1] * grid[2]
        # a cell holds its mean share of the beads plus four standard deviations of a random fluid's count
        # (a liquid's fluctuates less); a fuller cell is reported as an overflow
        mean = float(n) / n_cells
        cell_capacity = min(int(math.ceil(mean + 4.0 * math.sqrt(mean))) + 2, n)
        # neighbouring cells (offsets -1, 0, 1 along each axis, without repeats when an axis has < 3 cells)
        axes: List[List[int]] = []
        for d in range(3):
            offsets: List[int] = []
            for o in [-1, 0, 1]:
                wrapped = o % grid[d]
                if wrapped not in offsets:
                    offsets.append(wrapped)
            axes.append(offsets)
        exact = grid[0] >= 3 and grid[1] >= 3 and grid[2] >= 3
        if exact:  # the offsets themselves, so that each neighbouring cell also says its periodic image
            axes = [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]
        rows: List[List[int]] = []
        shifts: List[List[List[float]]] = []
        for ia in range(grid[0]):
            for ib in range(grid[1]):
                for ic in range(grid[2]):
                    row: List[int] = []
                    shift: List[List[float]] = []
                    for oa in axes[0]:
                        for ob in axes[1]:
                            for oc in axes[2]:
                                row.append((((ia + oa) % grid[0]) * grid[1] + (ib + ob) % grid[1]) * grid[2]
                                           + (ic + oc) % grid[2])
                                shift.append([float((ia + oa) // grid[0]), float((ib + ob) // grid[1]),
                                              float((ic + oc) // grid[2])])
                    rows.append(row)
                    shifts.append(shift)
        device = self._dtype_ref.device
        self.grid = torch.tensor(grid, dtype=torch.long, device=device)
        self.cell_neighbours = torch.tensor(rows, dtype=torch.long, device=device)
        self.cell_shifts = torch.tensor(shifts, dtype=self._dtype_ref.dtype, device=device)
        self.exact_images = exact
        self.n_cells = n_cells
        self.cell_capacity = cell_capacity
        self.table_capacity = neighbour_capacity
        self.reuse_on_cpu = reuse
        self.verlet_capacity = min(int(math.ceil(neighbour_capacity * (reach / self.cutoff_nm) ** 3)) + 8, max(n - 1, 1))
        self.verlet_ready = False
        self.triclinic = bool(box[1, 0] != 0) or bool(box[2, 0] != 0) or bool(box[2, 1] != 0)
        self.n_configured = n

    @torch.jit.export
    def overflowed(self, positions: Tensor, boxvectors: Tensor) -> bool:
        """True when the configured neighbour table cannot hold this configuration (a host read: for
        diagnosis after a NaN energy, not for every step)."""
        pos = positions.to(self._dtype_ref.dtype)
        if pos.shape[0] != self.n_configured:
            return False
        _, overflow = self.neighbour_table(pos, boxvectors.to(self._dtype_ref.dtype))
        return bool(overflow)

    @torch.jit.export
    def max_neighbours(self, positions: Tensor, boxvectors: Tensor) -> int:
        """The largest number of neighbours within the cutoff of any bead (a host read, for sizing)."""
        pos = positions.to(self._dtype_ref.dtype)
        box = boxvectors.to(self._dtype_ref.dtype)
        self.triclinic = bool(box[1, 0] != 0) or bool(box[2, 0] != 0) or bool(box[2, 1] != 0)
        everyone = torch.arange(pos.shape[0], device=pos.device).unsqueeze(0).expand(pos.shape[0], -1)
        dx, dy, dz = self._displacements(pos, box, everyone.contiguous())
        inside = dx * dx + dy * dy + dz * dz < self.cutoff_nm * self.cutoff_nm
        return int(inside.sum(dim=1).max()) - 1

    # -------------------------------------------------------------------------------------------
    # energy
    # -------------------------------------------------------------------------------------------
    def prior_energy(self, r_nm: Tensor) -> Tensor:
        """Prior energy (kJ/mol) of a full neighbour table (each pair twice), distances (N, K) in nm."""
        return self.prior_energy_and_slope(r_nm)[0]

    def prior_energy_and_slope(self, r_nm: Tensor) -> Tuple[Tensor, Tensor]:
        """:meth:`prior_energy` and its derivative (N, K) with respect to each slot's distance, kJ/mol/nm."""
        inside = r_nm < self.prior_cutoff
        # clamp so that pairs beyond the prior's cutoff (masked out below) never underflow exp()
        x = torch.clamp(r_nm, max=self.prior_cutoff) - self.prior_taper
        decay = torch.exp(-self.prior_a * x)
        pair = torch.where(inside, self.prior_e0 * (decay - self.prior_shift), torch.zeros_like(r_nm))
        slope = torch.where(inside, (-0.5 * self.prior_e0 * self.prior_a) * decay, torch.zeros_like(r_nm))
        return 0.5 * pair.sum(), slope

    def _input_features(self, types: Tensor, tau: Tensor, dtype: torch.dtype) -> Tensor:
        """Every bead's input features (N, nf_in): the one-hot bead types (a temperature-aware subclass may
        append tau)."""
        return input_features(types, self.n_types, dtype)

    def _heads_read_out(self, features: Tensor, output: Tensor) -> Tensor:
        """The hierarchical read-out (kcal/mol) of the input features and of one block's output features,
        summed over beads."""
        energy = torch.zeros((), dtype=output.dtype, device=output.device)
        for k, head in enumerate(self.heads):
            energy = energy + head(features if k == 0 else output).sum()
        return energy

    def _heads_output_weight(self) -> Tensor:
        """The weight (1, nf_out) of :meth:`_heads_read_out` on the output features (it is linear in them)."""
        weight = torch.zeros(0)
        for k, head in enumerate(self.heads):
            if k == 1:
                weight = head.weight
        return weight

    def _read_out(self, features: Tensor, output: Tensor, tau: Tensor) -> Tensor:
        """The network energy (kcal/mol) of a one-block network (a temperature-aware subclass combines two
        read-outs at tau)."""
        return self._heads_read_out(features, output)

    def _output_weight(self, tau: Tensor) -> Tensor:
        """The weight (1, nf_out) of :meth:`_read_out` on the block's output features."""
        return self._heads_output_weight()

    def _network_energy_and_slot_gradient(self, types: Tensor, vec: Tensor, r: Tensor, nbr: Tensor,
                                          tau: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The energy of a one-block network (kcal/mol) and its gradient (kcal/mol/angstrom) with respect to
        each slot's displacement r_j - r_i, as three (N, K) planes (x, y, z); arguments as for
        :meth:`network_energy`, ``tau`` for a temperature-aware subclass. See
        :meth:`_Block.output_and_slot_gradient`."""
        features = self._input_features(types, tau, vec.dtype)
        output = features
        zero = torch.zeros_like(r)
        gx, gy, gz = zero, zero, zero
        for block in self.blocks:  # one (analytic_gradient)
            output, gx, gy, gz = block.output_and_slot_gradient(features, vec, r, nbr, self._output_weight(tau))
        return self._read_out(features, output, tau), gx, gy, gz

    def _energy_and_gradient(self, pos: Tensor, box: Tensor, nbr: Tensor,
                             tau: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Energy (kJ/mol) and its gradient (N, 3) kJ/mol/nm with respect to the positions (N, 3) nm, by
        hand (no autograd): for a prior and at most one interaction block (``analytic_gradient``); without
        the volume term. ``tau``: the scaled temperature of a temperature-aware subclass."""
        t = torch.zeros((), dtype=pos.dtype, device=pos.device) if tau is None else tau
        n = pos.shape[0]
        vec_nm, r_nm = self._slot_geometry(pos, box, nbr)
        energy = torch.zeros((), dtype=pos.dtype, device=pos.device)
        radial_nm = torch.zeros_like(r_nm)  # dE/dr of the prior, kJ/mol/nm
        if self.has_prior:
            e_prior, radial_nm = self.prior_energy_and_slope(r_nm)
            energy = energy + e_prior
        inv_r = 1.0 / r_nm
        gx = radial_nm * vec_nm[0] * inv_r
        gy = radial_nm * vec_nm[1] * inv_r
        gz = radial_nm * vec_nm[2] * inv_r
        if len(self.blocks) > 0:
            types = self._bead_types(n, pos.device)
            e_net, nx, ny, nz = self._network_energy_and_slot_gradient(
                types, vec_nm * self.angstrom_per_nm, r_nm * self.angstrom_per_nm, nbr, t)
            energy = energy + self.kj_per_kcal * e_net
            to_nm = self.kj_per_kcal * self.angstrom_per_nm
            gx = gx + to_nm * nx
            gy = gy + to_nm * ny
            gz = gz + to_nm * nz
        # each slot's r_ij = r_j - r_i: +gradient on j (scattered; empty slots land on row N, dropped), - on i
        slot_grad = torch.stack([gx, gy, gz], dim=2)  # (N, K, 3)
        grad = torch.zeros(n + 1, 3, dtype=pos.dtype, device=pos.device).index_add_(
            0, nbr.reshape(-1), slot_grad.reshape(-1, 3))
        return energy, grad[:n] - slot_grad.sum(dim=1)

    def network_energy(self, types: Tensor, vec: Tensor, r: Tensor, nbr: Tensor) -> Tensor:
        """Network energy (kcal/mol) from the neighbour table ``nbr`` (N, K) (empty slots = N), its
        components ``vec`` (3, N, K) of r_j - r_i and distances ``r`` (N, K) in angstrom; ``types`` (N,) 0-based."""
        feats = self.network_features(types, vec, r, nbr)
        energy = torch.zeros((), dtype=vec.dtype, device=vec.device)
        for k, head in enumerate(self.heads):
            energy = energy + head(feats[k]).sum()
        return energy

    def network_features(self, types: Tensor, vec: Tensor, r: Tensor, nbr: Tensor,
                         extra_input: Optional[Tensor] = None) -> List[Tensor]:
        """The features (N, nf) of every level (one-hot input, then each interaction block), the
        arguments as for :meth:`network_energy`. ``extra_input``: a number appended to every bead's
        one-hot input (a network trained with the temperature as an input, ``openmm_cgnn.thermal``)."""
        comp = unit_components(vec, r, self.max_order)[0]  # (N, C, K)
        features = input_features(types, self.n_types, vec.dtype, extra_input)
        feats = [features]
        for block in self.blocks:
            features = block(features, r, comp, nbr)
            feats.append(features)
        return feats

    def _reused_table(self, pos: Tensor, box: Tensor) -> Tuple[Tensor, Tensor]:
        """The neighbour table from the Verlet list, searched again only when the box changed or a bead
        moved more than half the skin since the last search (CPU only: it reads tensors on the host)."""
        pos = pos.detach()
        box = box.detach()
        n = pos.shape[0]
        search = not self.verlet_ready or self.verlet_list.shape[0] != n or bool((box != self.verlet_box).any())
        if not search:
            moved = pos - self.verlet_positions
            mx, my, mz = self._minimum_image(moved[:, 0], moved[:, 1], moved[:, 2], box)
            search = bool((mx * mx + my * my + mz * mz).max() > 0.25 * self.verlet_skin_nm * self.verlet_skin_nm)
        if search:
            self.verlet_list, self.verlet_overflow = self._search(pos, box, self.cutoff_nm + self.verlet_skin_nm,
                                                                  self.verlet_capacity)
            self.verlet_positions = pos.clone()
            self.verlet_box = box.clone()
            self.verlet_ready = True
        dx, dy, dz = self._displacements(pos, box, self.verlet_list)
        inside = (dx * dx + dy * dy + dz * dz < self.cutoff_nm * self.cutoff_nm) & (self.verlet_list != n)
        nbr, count = self._compact(self.verlet_list, inside, self.table_capacity)
        return nbr, (count > self.table_capacity).any() | self.verlet_overflow

    @torch.jit.export
    def energy_of_layout(self, pos: Tensor, box: Tensor) -> Tensor:
        """The energy (kJ/mol) with the configured layout, NaN when the neighbour table overflows. On a
        GPU every call searches afresh: static shapes, no host synchronisation (CUDA graphs). On a CPU
        the table comes from a Verlet list reused between steps where the box has room for it, and is
        as wide as its fullest row."""
        if pos.device.type == "cpu":
            table = self._reused_table(pos, box) if self.reuse_on_cpu else self.neighbour_table(pos, box)
            if self.narrow_on_cpu:
                table = self._narrowed(table)
            nbr, overflow = table
        else:
            nbr, overflow = self.neighbour_table(pos, box)
        return self.energy_from_table(pos, box, nbr, overflow)

    def _narrowed(self, table: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        """A neighbour table cut to its fullest row (its rows are packed from the left): the CPU's step may
        change shapes, and the empty slots of a table sized for the densest training frame are wasted
        work there (a host read: CPU only)."""
        nbr, overflow = table
        width = max(int((nbr != nbr.shape[0]).sum(dim=1).max()), 1)
        return nbr[:, :width].contiguous(), overflow

    @torch.jit.export
    def energy_from_table(self, pos: Tensor, box: Tensor, nbr: Tensor, overflow: Tensor) -> Tensor:
        """The energy (kJ/mol) of positions (N, 3) nm in ``box`` (3, 3) nm given the neighbour table
        ``nbr`` (N, K) and its 0-d overflow flag (True: the result is NaN)."""
        n = pos.shape[0]
        if self.analytic_gradient:
            # forces by hand; autograd (openmm-torch's force call) sees only energy + (x - x0) . grad, with x0
            # a copy of x made without gradient tracking: its value is the energy, its gradient is grad. Not
            # x.detach(): torch.jit.freeze, which openmm-torch applies, removes detach as a no-op (x - x would
            # then have a zero gradient). No derivative w.r.t. the box (pressures are finite differences).
            with torch.no_grad():
                fixed = pos.clone()
                energy, grad = self._energy_and_gradient(fixed, box, nbr)
            energy = energy + ((pos - fixed) * grad).sum()
        else:
            types = self._bead_types(n, pos.device)
            vec_nm, r_nm = self._slot_geometry(pos, box, nbr)
            energy = torch.zeros((), dtype=pos.dtype, device=pos.device)
            if self.has_prior:
                energy = energy + self.prior_energy(r_nm)
            if len(self.blocks) > 0 or len(self.heads) > 0:
                e_net = self.network_energy(types, vec_nm * self.angstrom_per_nm, r_nm * self.angstrom_per_nm, nbr)
                energy = energy + self.kj_per_kcal * e_net
        energy = energy + self.volume_term(box, n)  # box only: no bead forces; seen by the MC barostat
        # an overflowing table makes energy and forces NaN rather than silently wrong
        invalid = torch.where(overflow, torch.full_like(energy, float("nan")), torch.ones_like(energy))
        return energy * invalid

    def forward(self, positions: Tensor, boxvectors: Tensor) -> Tensor:
        pos = positions.to(self._dtype_ref.dtype)
        box = boxvectors.to(self._dtype_ref.dtype)
        if pos.shape[0] != self.n_configured:
            self.configure(pos.shape[0], box, 0)
        return self.energy_of_layout(pos, box)


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
                           dtype: torch.dtype = torch.float32, neighbour_capacity: int = 0) -> CGPotential:
    """Build a :class:`CGPotential` from hippynn's network (Hipnn/HipnnVec/HipnnQuad) and HEnergy modules.

    ``neighbour_capacity``: neighbours per bead the table holds (0: estimated from the density)."""
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
        inter.ones_input = len(blocks) == 0 and int(network.nf_in) == 1
        blocks.append(_Block(inter, atoms, resnet, int_res, int_adjust))
    heads = [_linear_from(h) for h in energy.layers]
    n_types = int(network.nf_in)
    return CGPotential(n_types, blocks, heads, hard / ANGSTROM_PER_NM, prior, max_order, dtype,
                       neighbour_capacity=neighbour_capacity)


def most_neighbours(positions: np.ndarray, boxes: np.ndarray, cutoff_nm: float, max_frames: int = 20) -> int:
    """The largest number of neighbours within ``cutoff_nm`` that any bead has, over up to ``max_frames``
    evenly spread frames of ``positions`` (F, N, 3) nm in ``boxes`` (F, 3, 3) nm (rows)."""
    from vesin import NeighborList

    finder = NeighborList(cutoff=cutoff_nm, full_list=False)
    frames = np.unique(np.linspace(0, len(positions) - 1, min(max_frames, len(positions))).astype(int))
    most = 0
    for f in frames:
        i, j = finder.compute(points=positions[f], box=boxes[f], periodic=True, quantities="ij")
        counts = np.bincount(np.concatenate([i, j]), minlength=positions.shape[1])
        most = max(most, int(counts.max()))
    return most


def training_neighbour_capacity(metadata: dict, cutoff_nm: float) -> int:
    """The neighbour capacity for a model trained on the data sets named in its ``metadata``: the most
    neighbours any bead had there, times NEIGHBOUR_MARGIN, plus NEIGHBOUR_SLACK; 0 when none of the
    data sets can be read any more (the capacity is then estimated from the density when a System is
    made)."""
    from .dataset import CGDataset

    most = 0
    for entry in metadata.get("datasets", []):
        path = Path(entry.get("path", ""))
        if not path.is_file():
            continue
        ds = CGDataset.load(path)
        most = max(most, most_neighbours(ds.positions, ds.boxes, cutoff_nm))
    return int(math.ceil(most * NEIGHBOUR_MARGIN)) + NEIGHBOUR_SLACK if most > 0 else 0


def potential_from_model_dir(model_dir: str | Path, dtype: str | torch.dtype = "float32") -> tuple[CGPotential, Any]:
    """(un-scripted CGPotential, TrainedModel) for a trained model directory."""
    from .training import load_trained

    if isinstance(dtype, str):
        dtype = _dtype(dtype)
    loaded = load_trained(model_dir, dtype=torch.float64)
    cutoff_nm = max(float(loaded.network.dist_hard_max) / ANGSTROM_PER_NM,
                    float(loaded.prior.cutoff) if loaded.prior is not None else 0.0)
    capacity = training_neighbour_capacity(loaded.metadata, cutoff_nm)
    if loaded.thermal is not None:  # U(R, T): forward takes the temperature too (openmm_cgnn.thermal)
        from .thermal import thermal_potential_from_trained

        return thermal_potential_from_trained(loaded, dtype, neighbour_capacity=capacity), loaded
    pot = potential_from_hippynn(loaded.network, loaded.energy, loaded.prior, dtype=dtype,
                                 neighbour_capacity=capacity)
    return pot, loaded


def _dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        from .errors import ConfigError

        raise ConfigError(f"dtype (--precision) must be 'float32' or 'float64', got {name!r}") from None


# ----------------------------------------------------------------------------------------------
# export / load
# ----------------------------------------------------------------------------------------------
def script_potential(pot: CGPotential) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a potential whose weights are frozen: openmm-torch differentiates the
    energy for the forces, and gradients of the weights would be wasted work in every step."""
    for parameter in pot.parameters():
        parameter.requires_grad_(False)
    return torch.jit.script(pot)


def export_model(model_dir: str | Path, out_path: str | Path, dtype: str = "float32", overwrite: bool = False,
                 bead_types: Sequence[int] | None = None) -> Path:
    """Script the trained model in ``model_dir`` and save it to ``out_path`` (TorchScript ``.pt``).

    :param dtype: "float32" or "float64": the precision of the exported module.
    :param bead_types: optional (N,) 0-based bead types stored in the module (needed before use when the
        model has several bead types; can also be set later with ``module.set_types``).
    :return: ``out_path``. The file's ``metadata.json`` extra file holds cutoff_nm, neighbour_capacity
        (neighbours per bead the table holds; 0: estimated from the density), type_names, dtype, units,
        the prior parameters and the training metadata.
    """
    out_path = check_output_path(out_path, overwrite)
    torch_dtype = _dtype(dtype)
    pot, loaded = potential_from_model_dir(model_dir, torch_dtype)
    if bead_types is not None:
        pot.set_types(torch.as_tensor(list(bead_types), dtype=torch.long))
    volume = _volume_params(model_dir)
    pot.volume_term = VolumeTerm(volume, torch_dtype)
    scripted = script_potential(pot)
    meta = {
        "format": EXPORT_FORMAT, "version": EXPORT_FORMAT_VERSION,
        "cutoff_nm": pot.cutoff_nm, "network_cutoff_nm": pot.network_cutoff_nm,
        "neighbour_capacity": pot.neighbour_capacity,
        "type_names": loaded.type_names, "dtype": dtype,
        "type_masses": loaded.metadata.get("type_masses"),
        "units": {"positions": "nm", "boxvectors": "nm", "energy": "kJ/mol", "forces": "kJ/mol/nm"},
        "signature": "forward(positions (N,3) nm, boxvectors (3,3) nm rows) -> energy kJ/mol",
        "prior": loaded.prior.to_dict(),
        "network_class": loaded.blob["network_class"], "tensor_order": loaded.tensor_order,
        "training": loaded.metadata,
        "volume_term": volume.to_dict() if volume is not None else None,
    }
    if loaded.thermal is not None:  # the TorchForce global parameter "temperature" (openmm_cgnn.thermal)
        meta["temperature_aware"] = loaded.thermal.to_dict()
        meta["signature"] = ("forward(positions (N,3) nm, boxvectors (3,3) nm rows, temperature K) -> "
                             "energy kJ/mol")
        meta["global_parameters"] = {"temperature": "K"}
    extra = {"metadata.json": json.dumps(meta, default=str)}
    atomic_write(out_path, lambda tmp: torch.jit.save(scripted, str(tmp), _extra_files=extra))
    return out_path


def _volume_params(model_dir: str | Path) -> VolumeTermParams | None:
    """The fitted volume term of a model directory (``volume.json``), or None."""
    path = Path(model_dir) / "volume.json"
    return VolumeTermParams.load(path) if path.exists() else None


def check_model_file(path: str | Path) -> Path:
    """``path`` as a Path when it is a file; MissingInputError when it does not exist, InputFileError
    naming the file to give when it is a folder (a trained model directory, say)."""
    from .errors import InputFileError, MissingInputError

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise InputFileError(f"model '{path}' is a folder; give the .pt file written by "
                             f"'openmm-cgnn export {path} --out model.pt'")
    return path


def load_exported(path: str | Path,
                  map_location: str | torch.device | None = None) -> tuple[torch.jit.ScriptModule, dict]:
    """Load an exported CG potential: (ScriptModule, metadata dict of the file's ``metadata.json``)."""
    import vesin_torch  # noqa: F401  (files of format version 1 refer to vesin's TorchScript class)

    from .errors import InputFileError

    path = check_model_file(path)
    extra = {"metadata.json": ""}
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except (RuntimeError, ValueError, OSError, EOFError) as exc:
        if "torch.classes.vesin" in str(exc):
            raise InputFileError(
                f"cannot load '{path}': it uses vesin's TorchScript neighbour list; run `import openmm_cgnn` "
                "or `import vesin_torch` before torch.jit.load (and check that vesin-torch matches this torch)"
            ) from exc
        raise InputFileError(_not_an_export(path)) from None
    try:
        meta = json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
    except ValueError:
        meta = {}
    if not isinstance(meta, dict) or "cutoff_nm" not in meta or "type_names" not in meta:
        raise InputFileError(f"'{path}' is a TorchScript module but not an openmm-cgnn exported model (it has no "
                             "metadata.json with the cutoff and bead types); make one with 'openmm-cgnn export'")
    return module, meta


def _not_an_export(path: Path) -> str:
    """Why ``path`` does not load as an exported model, naming the file to use instead where we can tell."""
    from .training import MODEL_FORMAT

    what = f"'{path}' is not an exported openmm-cgnn model (the TorchScript .pt written by 'openmm-cgnn export')"
    head = path.read_bytes()[:512]
    if not head:
        return f"exported model '{path}' is empty; export the model again with 'openmm-cgnn export'"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        blob = None
    if isinstance(blob, dict) and blob.get("format") == MODEL_FORMAT:
        return (f"'{path}' is the hippynn weights file of the trained model directory '{path.parent}', not an "
                f"exported model; run 'openmm-cgnn export {path.parent} --out model.pt' and give that file")
    if head.startswith(b"PK"):
        return f"{what}; it is truncated, damaged or another kind of torch file"
    return what
