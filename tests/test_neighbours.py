"""The exported model's neighbour table: exact, static in shape, free of host synchronisation, and
never silently wrong when it overflows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vesin import NeighborList

from openmm_cgnn.export import CGPotential

# Ops that copy a tensor value to the host (a synchronisation on a GPU) or give data-dependent shapes.
SYNC_OPS = {"aten::item", "aten::Int", "aten::Float", "aten::Bool", "aten::IntImplicit", "aten::FloatImplicit",
            "aten::ScalarImplicit", "aten::is_nonzero", "aten::tolist", "aten::nonzero", "aten::argwhere",
            "aten::masked_select", "aten::unique", "aten::_unique2", "aten::unique_consecutive", "aten::bincount",
            "aten::repeat_interleave", "aten::_local_scalar_dense"}

CUBIC = np.eye(3) * 2.4
TRICLINIC = np.array([[2.4, 0.0, 0.0], [0.7, 2.3, 0.0], [-0.5, 0.6, 2.2]])  # OpenMM's reduced form


def _geometry_only(cutoff_nm: float) -> torch.jit.ScriptModule:
    """A CGPotential without network or prior: just its neighbour search."""
    return torch.jit.script(CGPotential(1, [], [], cutoff_nm, None, 0, torch.float64))


def _random_liquid(box: np.ndarray, n: int, seed: int) -> np.ndarray:
    frac = np.random.default_rng(seed).uniform(-0.5, 1.5, size=(n, 3))  # some beads outside the box
    return frac @ box


def _table_pairs(nbr: torch.Tensor) -> set[tuple[int, int]]:
    n = nbr.shape[0]
    return {(i, int(j)) for i in range(n) for j in nbr[i] if int(j) != n}


@pytest.mark.parametrize("box", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
@pytest.mark.parametrize("cutoff", [0.45, 1.05], ids=["3+ cells per axis", "one or two cells per axis"])
def test_table_holds_exactly_the_neighbours_within_the_cutoff(box, cutoff):
    module = _geometry_only(cutoff)
    pos = _random_liquid(box, 300, seed=1)
    module.configure(300, torch.tensor(box), 0)
    nbr, overflow = module.neighbour_table(torch.tensor(pos), torch.tensor(box))
    assert not bool(overflow)
    i, j = NeighborList(cutoff=cutoff, full_list=True).compute(points=pos, box=box, periodic=True, quantities="ij")
    assert _table_pairs(nbr) == set(zip(i.tolist(), j.tolist()))
    if cutoff < 0.5:
        assert module.grid.tolist() == [4, 4, 4] if box is CUBIC else min(module.grid.tolist()) >= 3


def test_step_has_no_host_synchronisation(tiny_model_pt):
    """forward and the step it runs contain no op that reads a tensor value on the host; only the
    one-off layout (configure) may."""
    from openmm_cgnn.export import load_exported

    module, _ = load_exported(tiny_model_pt)
    step_ops = {node.kind() for node in module.energy_of_layout.inlined_graph.nodes()}
    for block_owner in list(module.energy_of_layout.inlined_graph.nodes()):
        for block in block_owner.blocks():
            step_ops |= {node.kind() for node in block.nodes()}
    assert not step_ops & SYNC_OPS, step_ops & SYNC_OPS
    forward_ops = set()
    calls = set()
    for node in module.forward.graph.findAllNodes("prim::CallMethod"):
        calls.add(node.s("name"))
    for node in module.forward.graph.nodes():
        forward_ops.add(node.kind())
        for block in node.blocks():
            forward_ops |= {n.kind() for n in block.nodes()}
    assert not forward_ops & SYNC_OPS
    assert calls == {"configure", "energy_of_layout"}
    # the one-off layout does read the box on the host, which is why it is kept out of the step
    configure_ops = {node.kind() for node in module.configure.graph.nodes()}
    assert configure_ops & SYNC_OPS


def _op_shapes(module, pos: np.ndarray, box: np.ndarray) -> list:
    x = torch.tensor(pos, requires_grad=True)
    # the graph as written: the profiling executor's own re-optimisation after a few calls is not our shapes
    with torch.jit.optimized_execution(False), torch.profiler.profile(record_shapes=True) as prof:
        energy = module(x, torch.tensor(box))
        torch.autograd.grad(energy, x)  # forces only, as openmm-torch asks (no parameter gradients)
    # as a sorted list: the autograd engine may order independent backward ops differently
    return sorted((e.name, str([tuple(s) for s in e.input_shapes])) for e in prof.events()
                  if e.name.startswith("aten::"))


def test_every_intermediate_keeps_its_shape_from_call_to_call(tiny_model_pt, methanol_dataset):
    from openmm_cgnn.dataset import CGDataset
    from openmm_cgnn.export import load_exported

    ds = CGDataset.load(methanol_dataset)
    module, _ = load_exported(tiny_model_pt)
    module(torch.tensor(ds.positions[0]), torch.tensor(ds.boxes[0]))  # lays out the table
    first = _op_shapes(module, ds.positions[1], ds.boxes[1])
    for frame in (5, ds.n_frames - 1):
        box = ds.boxes[frame] * 1.02  # a barostat move as well
        assert _op_shapes(module, ds.positions[frame] * 1.02, box) == first
    assert len(first) > 50


def test_overflow_makes_energy_and_forces_nan_and_says_so(tiny_model_pt, methanol_dataset):
    from openmm_cgnn.dataset import CGDataset
    from openmm_cgnn.export import load_exported

    ds = CGDataset.load(methanol_dataset)
    module, meta = load_exported(tiny_model_pt)
    pos, box = torch.tensor(ds.positions[0]), torch.tensor(ds.boxes[0])
    assert meta["neighbour_capacity"] > module.max_neighbours(pos, box)
    module.configure(ds.n_beads, box, 3)  # far fewer slots than neighbours
    x = pos.clone().requires_grad_(True)
    energy = module(x, box)
    energy.backward()
    assert torch.isnan(energy) and torch.isnan(x.grad).all()
    assert module.overflowed(pos, box)
    module.configure(ds.n_beads, box, 0)  # the recorded capacity again
    assert torch.isfinite(module(pos, box)) and not module.overflowed(pos, box)
    # a box compressed beyond the layout's margin
    squeezed = 0.85
    assert not module.overflowed(pos * 0.95, box * 0.95)
    assert module.overflowed(pos * squeezed, box * squeezed) or (box[0, 0] * squeezed <= 2 * meta["cutoff_nm"])
