"""Periodic pairs of every training frame, found once before training and fed to hippynn's graph.

Training frames do not move, so their neighbour pairs are the same in every epoch. hippynn's own
pair finders (``KDTreePairsMemory``, ``PeriodicPairIndexer``) search them again for every frame of
every batch; here they are searched once per frame with vesin (a cell-list neighbour list) and
stored as three extra arrays of hippynn's ``Database``:

=================  ====================  ====================================================
key                shape / dtype         meaning
=================  ====================  ====================================================
``pair_i``         (F, P) int32          first bead of each pair (frame-local index), -1 = padding
``pair_j``         (F, P) int32          second bead of each pair (frame-local index), -1 = padding
``pair_shift``     (F, P, 3) int8        periodic image of the pair, in box vectors
=================  ====================  ====================================================

Each unordered pair is stored once (a half list; ``P`` is the most pairs of any frame), with the
pair vector ``r_i - r_j + shift @ box`` shorter than the cutoff. :class:`CachedPairIndexer` turns a
batch of these rows into hippynn's full (both directions) pair list and computes the pair vectors
and distances from the batch's coordinates, differentiably, so forces still come from autograd.

Training with explicit forces (:mod:`openmm_cgnn.explicit_forces`) stores the same pairs as a full
neighbour table per frame instead (each pair in both directions, the rows padded to the most
neighbours ``K`` of any bead of any frame), which a batch gathers without sorting:

=================  ====================  ====================================================
key                shape / dtype         meaning
=================  ====================  ====================================================
``slot_j``         (F, N, K) int32       neighbours of each bead (frame-local index), -1 = empty
``slot_shift``     (F, N, K, 3) int8     periodic image: ``r_j - r_i + shift @ box`` is the slot's vector
=================  ====================  ====================================================

Lengths are those of the positions given (angstrom inside training); the arrays hold no lengths.
"""

from __future__ import annotations

import numpy as np
import torch
from hippynn.graphs.indextypes import IdxType
from hippynn.graphs.nodes.base import InputNode, MultiNode
from hippynn.graphs.nodes.pairs import PeriodicPairOutputs
from hippynn.graphs.nodes.tags import PairIndexer

PAIR_KEYS = ("pair_i", "pair_j", "pair_shift")
SLOT_KEYS = ("slot_j", "slot_shift")


def find_frame_pairs(positions: np.ndarray, box: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half list of the periodic pairs of one frame closer than ``cutoff``.

    :param positions: (N, 3) positions (any length unit, the same as ``box`` and ``cutoff``).
    :param box: (3, 3) box vectors as rows.
    :param cutoff: pair cutoff.
    :return: ``i`` (P,), ``j`` (P,) bead indices and ``shift`` (P, 3) integer image offsets such that
        ``positions[i] - positions[j] + shift @ box`` is the pair vector, shorter than ``cutoff``.
    """
    from vesin import NeighborList

    i, j, shift = NeighborList(cutoff=float(cutoff), full_list=False).compute(
        points=np.ascontiguousarray(positions, dtype=np.float64), box=np.asarray(box, dtype=np.float64),
        periodic=True, quantities="ijS")
    # vesin's vector is r_j - r_i + S @ box; hippynn's is r[first] - r[second] + offset @ box
    return np.asarray(j, dtype=np.int64), np.asarray(i, dtype=np.int64), np.asarray(shift, dtype=np.int64)


def precompute_pair_arrays(positions: np.ndarray, boxes: np.ndarray, n_real: np.ndarray | int,
                           cutoff: float) -> dict[str, np.ndarray]:
    """The ``pair_i``, ``pair_j``, ``pair_shift`` arrays (module docstring) of every frame.

    :param positions: (F, N, 3) positions; beads ``n_real[f]`` and beyond of frame ``f`` are padding.
    :param boxes: (F, 3, 3) box vectors as rows.
    :param n_real: (F,) number of real beads per frame (or one number for all).
    :param cutoff: pair cutoff, the unit of ``positions``.
    """
    positions = np.asarray(positions)
    boxes = np.asarray(boxes)
    n_frames, n_max = positions.shape[:2]
    if n_max >= np.iinfo(np.int32).max:
        raise ValueError(f"{n_max} beads per frame do not fit the int32 pair arrays")
    n_real = np.broadcast_to(np.asarray(n_real, dtype=np.int64), (n_frames,))
    found = [find_frame_pairs(positions[f, :n_real[f]], boxes[f], cutoff) for f in range(n_frames)]
    width = max(1, max(len(i) for i, _, _ in found))
    pair_i = np.full((n_frames, width), -1, dtype=np.int32)
    pair_j = np.full((n_frames, width), -1, dtype=np.int32)
    pair_shift = np.zeros((n_frames, width, 3), dtype=np.int8)
    for f, (i, j, s) in enumerate(found):
        if len(s) and np.abs(s).max() > np.iinfo(np.int8).max:
            raise ValueError(f"frame {f}: periodic image offsets beyond 127 boxes; wrap the positions into the box")
        pair_i[f, :len(i)] = i
        pair_j[f, :len(j)] = j
        pair_shift[f, :len(s)] = s
    return {"pair_i": pair_i, "pair_j": pair_j, "pair_shift": pair_shift}


def add_pair_arrays(arrays: dict[str, np.ndarray], cutoff: float) -> dict[str, np.ndarray]:
    """``arrays`` (hippynn database arrays: ``species`` (F, N) with 0 as padding at the end of each
    frame, ``coordinates`` (F, N, 3), ``cell`` (F, 3, 3)) plus the cached pair arrays."""
    species = np.asarray(arrays["species"])
    n_real = (species != 0).sum(axis=1)
    if np.any(species[np.arange(species.shape[1])[None, :] >= n_real[:, None]] != 0):
        raise ValueError("cached pairs need every frame's padding beads (species 0) after its real beads")
    return {**arrays, **precompute_pair_arrays(arrays["coordinates"], arrays["cell"], n_real, cutoff)}


def precompute_slot_arrays(positions: np.ndarray, boxes: np.ndarray, n_real: np.ndarray | int,
                           cutoff: float) -> dict[str, np.ndarray]:
    """The ``slot_j`` and ``slot_shift`` arrays (module docstring) of every frame: full neighbour tables.

    :param positions: (F, N, 3) positions; beads ``n_real[f]`` and beyond of frame ``f`` are padding.
    :param boxes: (F, 3, 3) box vectors as rows.
    :param n_real: (F,) number of real beads per frame (or one number for all).
    :param cutoff: pair cutoff, the unit of ``positions``.
    """
    halves = precompute_pair_arrays(positions, boxes, n_real, cutoff)
    n_frames, n_max = np.asarray(positions).shape[:2]
    rows, nbrs, shifts = [], [], []
    for f in range(n_frames):
        valid = halves["pair_i"][f] >= 0
        i = halves["pair_i"][f][valid].astype(np.int64)
        j = halves["pair_j"][f][valid].astype(np.int64)
        s = halves["pair_shift"][f][valid]
        # the half list's vector is r_i - r_j + s @ box: row j sees i at +s, row i sees j at -s
        row = np.concatenate([j, i])
        nbr = np.concatenate([i, j])
        shift = np.concatenate([s, -s])
        order = np.argsort(row, kind="stable")
        rows.append(row[order])
        nbrs.append(nbr[order])
        shifts.append(shift[order])
    counts = [np.bincount(r, minlength=n_max) for r in rows]
    width = max(1, max(int(c.max()) if len(c) else 0 for c in counts))
    slot_j = np.full((n_frames, n_max, width), -1, dtype=np.int32)
    slot_shift = np.zeros((n_frames, n_max, width, 3), dtype=np.int8)
    for f in range(n_frames):
        start = np.cumsum(counts[f]) - counts[f]
        rank = np.arange(len(rows[f])) - start[rows[f]]
        slot_j[f, rows[f], rank] = nbrs[f]
        slot_shift[f, rows[f], rank] = shifts[f]
    return {"slot_j": slot_j, "slot_shift": slot_shift}


def add_slot_arrays(arrays: dict[str, np.ndarray], cutoff: float) -> dict[str, np.ndarray]:
    """``arrays`` (as for :func:`add_pair_arrays`) plus the cached neighbour tables ``slot_j``, ``slot_shift``."""
    species = np.asarray(arrays["species"])
    n_real = (species != 0).sum(axis=1)
    if np.any(species[np.arange(species.shape[1])[None, :] >= n_real[:, None]] != 0):
        raise ValueError("cached pairs need every frame's padding beads (species 0) after its real beads")
    return {**arrays, **precompute_slot_arrays(arrays["coordinates"], arrays["cell"], n_real, cutoff)}


class CachedPairs(torch.nn.Module):
    """Full pair list of a batch from its cached half lists; pair vectors from the coordinates.

    Outputs are those of hippynn's periodic pair indexers: ``pair_dist`` (P,), ``pair_first`` (P,),
    ``pair_second`` (P,), ``pair_coord`` (P, 3) = ``r[first] - r[second] + offset @ cell``,
    ``cell_offsets`` (P, 3) and ``offset_index`` (P,); pairs at or beyond the cutoff are dropped.
    """

    def __init__(self, hard_dist_cutoff: float):
        super().__init__()
        self.hard_dist_cutoff = float(hard_dist_cutoff)

    def forward(self, coordinates, cell, real_atoms, inv_real_atoms, n_molecules: int, n_atoms_max: int,
                pair_i, pair_j, pair_shift):
        with torch.no_grad():
            valid = pair_i >= 0
            mol = torch.arange(pair_i.shape[0], device=pair_i.device).unsqueeze(1).expand_as(pair_i)[valid]
            first = inv_real_atoms[pair_i[valid].long() + mol * n_atoms_max]
            second = inv_real_atoms[pair_j[valid].long() + mol * n_atoms_max]
            shift = pair_shift[valid].long()
            # both directions, as hippynn's networks expect
            pair_first = torch.cat([first, second])
            pair_second = torch.cat([second, first])
            cell_offsets = torch.cat([shift, -shift])
            pair_mol = torch.cat([mol, mol])
            offsets = torch.bmm(cell_offsets.to(cell.dtype).unsqueeze(1), cell[pair_mol]).squeeze(1)
            n_images = int(cell_offsets.abs().max()) if cell_offsets.numel() else 0
            n_off = 2 * n_images + 1
            o1, o2, o3 = (cell_offsets + n_images).unbind(dim=1)
            offset_index = o3 + n_off * (o2 + n_off * o1)
        coordflat = coordinates.reshape(n_molecules * n_atoms_max, 3)[real_atoms]
        pair_coord = coordflat[pair_first] - coordflat[pair_second] + offsets
        pair_dist = pair_coord.norm(dim=1)
        keep = pair_dist < self.hard_dist_cutoff
        return (pair_dist[keep], pair_first[keep], pair_second[keep], pair_coord[keep], cell_offsets[keep],
                offset_index[keep])


class CachedPairArray(InputNode):
    """Input node of one cached pair array (``pair_i``, ``pair_j`` or ``pair_shift``) of the database."""

    _index_state = IdxType.NotFound
    input_type_str = "CachedPairs"


class CachedPairIndexer(PeriodicPairOutputs, PairIndexer, MultiNode):
    """hippynn pair-indexer node (outputs as ``PeriodicPairIndexer``) running :class:`CachedPairs`."""

    _input_names = ("coordinates", "cell", "real_atoms", "inv_real_atoms", "n_molecules", "n_atoms_max",
                    "cached_i", "cached_j", "cached_shift")

    def __init__(self, name, parents, dist_hard_max: float):
        self.dist_hard_max = dist_hard_max
        super().__init__(name, parents, module=CachedPairs(dist_hard_max))


def cached_pair_indexer(name: str, positions, cell, padding_indexer, dist_hard_max: float) -> CachedPairIndexer:
    """A :class:`CachedPairIndexer` node that reads the cached arrays (``PAIR_KEYS``) from the database.

    :param positions: hippynn ``PositionsNode``; :param cell: ``CellNode``;
    :param padding_indexer: the ``PaddingIndexer`` node of the species.
    """
    arrays = tuple(CachedPairArray(name=f"{name}.{key}", db_name=key) for key in PAIR_KEYS)
    parents = (positions, cell, padding_indexer.real_atoms, padding_indexer.inv_real_atoms,
               padding_indexer.n_molecules, padding_indexer.n_atoms_max, *arrays)
    return CachedPairIndexer(name, parents, dist_hard_max)
