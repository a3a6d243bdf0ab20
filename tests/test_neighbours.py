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
        assert min(module.grid.tolist()) >= 3 and module.exact_images  # the path with images from the cells


def _ops(graph) -> set[str]:
    """Kinds of every node of a TorchScript graph, nested blocks included."""
    kinds = set()
    for node in graph.nodes():
        kinds.add(node.kind())
        for block in node.blocks():
            kinds |= _ops(block)
    return kinds


def test_step_has_no_host_synchronisation(tiny_model_pt):
    """The GPU step (fresh search + energy) contains no op that reads a tensor value on the host; only the
    one-off layout (configure) and the CPU-only reuse and narrowing of the table may."""
    from openmm_cgnn.export import load_exported

    module, _ = load_exported(tiny_model_pt)
    for method in (module.neighbour_table, module.energy_from_table):
        assert not _ops(method.inlined_graph) & SYNC_OPS, (method.name, _ops(method.inlined_graph) & SYNC_OPS)
    for method, allowed_calls in ((module.forward, {"configure", "energy_of_layout"}),
                                  (module.energy_of_layout,
                                   {"_reused_table", "_narrowed", "neighbour_table", "energy_from_table"})):
        assert not _ops(method.graph) & SYNC_OPS
        assert {n.s("name") for n in method.graph.findAllNodes("prim::CallMethod")} == allowed_calls
    # the CPU-only reuse sits in a branch taken only for tensors on the CPU
    top_level_calls = {n.s("name") for n in module.energy_of_layout.graph.nodes() if n.kind() == "prim::CallMethod"}
    assert not top_level_calls & {"_reused_table", "_narrowed"}
    assert "prim::device" in _ops(module.energy_of_layout.graph)
    # the one-off layout does read the box on the host, which is why it is kept out of the step
    assert _ops(module.configure.graph) & SYNC_OPS


def test_reused_table_gives_the_same_forces_as_a_fresh_search(tiny_model_pt, methanol_dataset):
    """The CPU's Verlet-list reuse equals searching afresh, also after moves that force a new search."""
    from openmm_cgnn.dataset import CGDataset
    from openmm_cgnn.export import load_exported

    ds = CGDataset.load(methanol_dataset)
    module, meta = load_exported(tiny_model_pt)
    # a 2x2x2 replica of a frame: room for neighbours within cutoff + skin
    images = [np.array([a, b, c]) @ ds.boxes[0] for a in range(2) for b in range(2) for c in range(2)]
    pos = np.concatenate([ds.positions[0] + s for s in images])
    box = torch.tensor(2 * ds.boxes[0])
    module.configure(len(pos), box, 0)
    assert module.reuse_on_cpu
    rng = np.random.default_rng(3)
    for step in range(6):
        pos = pos + rng.normal(0.0, 0.012, pos.shape)  # after a few moves some bead passes half the skin
        x = torch.tensor(pos, requires_grad=True)
        e_reused = module.energy_of_layout(x, box)
        (f_reused,) = torch.autograd.grad(e_reused, x)
        nbr, overflow = module.neighbour_table(x, box)
        y = torch.tensor(pos, requires_grad=True)
        e_fresh = module.energy_from_table(y, box, nbr, overflow)
        (f_fresh,) = torch.autograd.grad(e_fresh, y)
        assert float(e_reused) == pytest.approx(float(e_fresh), rel=1e-12)
        assert torch.allclose(f_reused, f_fresh, rtol=1e-10, atol=1e-10)


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
    module.reuse_on_cpu = False  # the GPU path: a fresh search every call, at the table's full width
    module.narrow_on_cpu = False
    module(torch.tensor(ds.positions[0]), torch.tensor(ds.boxes[0]))  # sizes the workspace for that width
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
