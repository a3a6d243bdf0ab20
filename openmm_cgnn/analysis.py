"""Structure and thermodynamics of CG and all-atom runs: RDF, ADF, density, error bars, metrics.

Plain functions over arrays, in the style of mdtraj's geometry functions:

* ``positions``: (F, N, 3) float, nm (a single frame (N, 3) is accepted too);
* ``boxes``: (F, 3, 3) float, nm, periodic box vectors as **rows** (OpenMM's convention); any
  triclinic basis is accepted, reduced or not (a single (3, 3) box is used for every frame).

Periodic neighbour search uses vesin's cell list (float64, exact minimum image for any box basis,
O(N) per frame) rather than ``mdtraj.compute_rdf``, which builds all N(N-1)/2 pair distances per
frame in float32 and assumes an OpenMM-reduced box; the tests cross-check ``rdf`` against
``mdtraj.compute_rdf``. The same neighbour list gives the bond vectors the ADF needs, and it is the
one ``prior.py`` uses for the RDF onset, so every structural quantity here shares one periodic
treatment.

Every distance is counted only up to the *minimum-image radius* (``minimum_image_radius``): half
the shortest non-zero lattice vector of the box, the radius of the largest sphere that fits in the
Wigner-Seitz cell. Below it each pair of beads has at most one periodic image within r, so g(r) of
an ideal gas is exactly 1 and no bead sees an image of itself. For a rectangular box it is half the
shortest edge; for OpenMM's rhombic dodecahedron (box vectors of length d) it is d/2, more than
half the face-to-face width (d/(2 sqrt 2)).

Cost: ``import vesin`` also imports torch when torch is installed (a few seconds, once per
process); the first call here pays it.

Metrics (quoted in the README; each defined exactly in its docstring): ``rdf_metrics`` (mean and
max absolute deviation of g(r), first-peak position and height errors), ``adf_l1`` (L1 distance of
two angle densities, 0 = identical, 2 = disjoint), ``density_error`` (relative density error with
its propagated standard error).

Uncertainty of the metrics: ``rdf_frames`` / ``adf_frames`` keep the curves frame by frame
(``FrameSums``); ``plan_blocks`` cuts a trajectory into blocks a few integrated autocorrelation
times long; ``bootstrap_metric`` resamples the blocks of both trajectories and gives each metric's
standard error; ``noise_floor`` gives the value a distance metric takes from sampling noise alone
(two halves, or two independent runs, of the reference); ``significant_difference`` applies the
2-sigma rule to a pair of values with their errors.

There is deliberately no CG pressure estimator: the GNN energy is many-body, so the virial needs
dU/d(pair vector) for every neighbour-list edge (or the derivative with respect to the box), which
per-bead forces, positions and box alone do not determine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .units import AVOGADRO

__all__ = [
    "minimum_image_radius", "rdf", "coordination_number", "first_peak", "first_minimum",
    "adf", "density", "block_average", "statistical_inefficiency", "series_mean_se", "block_drift",
    "rdf_metrics", "adf_l1", "density_error",
    "FrameSums", "BlockPlan", "rdf_frames", "adf_frames", "block_observables", "plan_blocks", "bootstrap_metric",
    "noise_floor", "significant_difference", "rdf_comparison", "rdf_distances", "adf_comparison",
    "density_comparison", "comparison_uncertainty", "curve_se",
]


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def _frames(positions: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions as (F, N, 3) and boxes as (F, 3, 3), float64, checked."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise ValueError(f"positions must have shape (F, N, 3) or (N, 3), got {np.shape(positions)}")
    box = np.asarray(boxes, dtype=np.float64)
    if box.shape == (3, 3):
        box = np.broadcast_to(box, (pos.shape[0], 3, 3))
    if box.shape != (pos.shape[0], 3, 3):
        raise ValueError(f"boxes must have shape ({pos.shape[0]}, 3, 3) or (3, 3), got {np.shape(boxes)}")
    vol = np.abs(np.linalg.det(box))
    if not np.all(vol > 0):
        raise ValueError("every box must have a non-zero volume (box vectors are rows, nm)")
    return pos, box


def _shortest_lattice_vector(box: np.ndarray) -> float:
    """Length of the shortest non-zero vector of the lattice spanned by the rows of ``box``."""
    v = np.array(box, dtype=np.float64)
    # Pairwise (Lagrange-Gauss) reduction until no vector shortens; then the shortest lattice
    # vector is among the small integer combinations of the reduced basis.
    for _ in range(100):
        changed = False
        for a in range(3):
            for b in range(3):
                if a == b:
                    continue
                k = round(float(v[a] @ v[b]) / float(v[b] @ v[b]))
                if k != 0:
                    new = v[a] - k * v[b]
                    if new @ new < v[a] @ v[a] - 1e-12 * (v[a] @ v[a]):
                        v[a] = new
                        changed = True
        if not changed:
            break
    n = np.arange(-2, 3)
    coef = np.stack(np.meshgrid(n, n, n, indexing="ij"), axis=-1).reshape(-1, 3)
    coef = coef[np.any(coef != 0, axis=1)]
    return float(np.min(np.linalg.norm(coef @ v, axis=1)))


def minimum_image_radius(boxes: np.ndarray) -> float:
    """Largest radius (nm) below which every bead pair has at most one periodic image, all frames.

    Parameters
    ----------
    boxes : (F, 3, 3) or (3, 3) array, nm, box vectors as rows (any basis of the lattice).

    Returns
    -------
    float, nm: half the shortest non-zero lattice vector, minimised over frames (the in-radius
    of the Wigner-Seitz cell). This is ``rdf``'s default ``r_max`` and the largest ``r_max`` or
    ``shell_cutoff`` the functions here accept.
    """
    box = np.asarray(boxes, dtype=np.float64).reshape(-1, 3, 3)
    # Identical boxes (NVT) are common: reduce each distinct box once.
    uniq = np.unique(box.reshape(len(box), 9), axis=0).reshape(-1, 3, 3)
    return 0.5 * min(_shortest_lattice_vector(b) for b in uniq)


def _neighbor_list(full_list: bool, cutoff: float):
    from vesin import NeighborList

    return NeighborList(cutoff=float(cutoff), full_list=full_list)


def _gaussian_smooth(y: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Gaussian smoothing with a standard deviation of ``sigma_bins`` samples (edges padded with the end
    values); unchanged for ``sigma_bins <= 0``."""
    from scipy.ndimage import gaussian_filter1d

    y = np.asarray(y, dtype=np.float64)
    return gaussian_filter1d(y, sigma_bins, mode="nearest") if sigma_bins > 0 else y


def _uniform_spacing(x: np.ndarray, name: str) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) < 3:
        raise ValueError(f"{name} must be a 1-D grid with at least 3 points")
    dx = np.diff(x)
    if not np.allclose(dx, dx[0], rtol=1e-6, atol=0):
        raise ValueError(f"{name} must be uniformly spaced")
    return float(dx[0])


# ---------------------------------------------------------------------------------------------
# radial distribution function
# ---------------------------------------------------------------------------------------------
def rdf(positions: np.ndarray, boxes: np.ndarray, r_max: float | None = None, bin_width: float = 0.005,
        types: np.ndarray | None = None, pair: tuple[int, int] | None = None,
        molecules: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bead-bead radial distribution function g(r), averaged over frames.

    Parameters
    ----------
    positions : (F, N, 3) array, nm (or (N, 3) for one frame). Need not be wrapped.
    boxes : (F, 3, 3) array, nm, box vectors as rows (or one (3, 3) box for all frames).
    r_max : float, nm, optional
        Upper end of the histogram. Default and upper limit: ``minimum_image_radius(boxes)``
        (half the shortest lattice vector; half the shortest edge of a rectangular box). The
        histogram covers [0, n_bins * bin_width] with n_bins = floor(r_max / bin_width).
    bin_width : float, nm.
    types : (N,) int array, optional. Bead type of each bead; needed only with ``pair``.
    pair : (a, b), optional. Only pairs of a bead of type a with a bead of type b (a == b
        allowed). Default: all bead pairs.
    molecules : (N,) int array, optional. Molecule of each bead: pairs within one molecule are left
        out (the intermolecular RDF; ``n_pairs`` counts only pairs of different molecules). Not
        combined with ``pair``.

    Returns
    -------
    r : (n_bins,) array, nm, bin centres.
    g : (n_bins,) array, dimensionless. With ``n_pairs`` distinct bead pairs (N(N-1)/2 for all
        beads or a == b, N_a N_b otherwise), ``counts[k]`` the pairs whose minimum-image distance
        falls in bin k summed over frames, and ``V_k`` the exact shell volume
        4/3 pi (r_{k+1}^3 - r_k^3):
        ``g[k] = counts[k] / sum_f (n_pairs V_k / V_f)`` -- the same normalisation as
        ``mdtraj.compute_rdf`` (exactly 1 on average for an ideal gas, also when V_f varies).
    """
    sums = rdf_frames(positions, boxes, r_max=r_max, bin_width=bin_width, types=types, pair=pair,
                      molecules=molecules)
    return sums.x, sums.curve()


def rdf_frames(positions: np.ndarray, boxes: np.ndarray, r_max: float | None = None, bin_width: float = 0.005,
               types: np.ndarray | None = None, pair: tuple[int, int] | None = None,
               molecules: np.ndarray | None = None) -> "FrameSums":
    """The RDF of ``rdf`` (same arguments) kept frame by frame, for resampling (``bootstrap_metric``).

    Returns a :class:`FrameSums` with ``x`` the bin centres (nm), ``num[f, k]`` the pairs of frame f in
    bin k, ``den[f]`` = 1 / V_f (nm^-3) and ``norm[k]`` = n_pairs V_k, so that ``curve()`` is ``rdf``'s g
    and ``curve(weights)`` the g of any resample of frames.
    """
    pos, box = _frames(positions, boxes)
    limit = minimum_image_radius(box)
    if r_max is None:
        r_max = limit
    r_max = float(r_max)
    if r_max > limit * (1 + 1e-9):
        raise ValueError(f"r_max = {r_max:.4f} nm exceeds the minimum-image radius {limit:.4f} nm "
                         "(half the shortest periodic lattice vector); beyond it pairs are counted "
                         "through several images")
    if bin_width <= 0:
        raise ValueError("bin_width must be positive")
    n_bins = int(math.floor(r_max / bin_width + 1e-9))
    if n_bins < 1:
        raise ValueError(f"r_max = {r_max} nm is shorter than one bin ({bin_width} nm)")
    edges = np.arange(n_bins + 1) * bin_width
    r_top = float(edges[-1])
    n = pos.shape[1]

    if pair is not None:
        if types is None:
            raise ValueError("pair needs types (the bead type of each bead)")
        types = np.asarray(types)
        if types.shape != (n,):
            raise ValueError(f"types must have shape ({n},), got {types.shape}")
        a, b = int(pair[0]), int(pair[1])
        na, nb = int(np.sum(types == a)), int(np.sum(types == b))
        n_pairs = na * (na - 1) // 2 if a == b else na * nb
    else:
        a = b = None
        n_pairs = n * (n - 1) // 2
    if molecules is not None:
        if pair is not None:
            raise ValueError("molecules and pair cannot be combined")
        molecules = np.asarray(molecules)
        sizes = np.bincount(np.unique(molecules, return_inverse=True)[1])
        n_pairs -= int(np.sum(sizes * (sizes - 1) // 2))
    if n_pairs == 0:
        raise ValueError("no bead pairs to count")

    counts = np.zeros((pos.shape[0], n_bins), dtype=np.float64)
    nl = _neighbor_list(False, r_top)
    for f in range(pos.shape[0]):
        i, j, d = nl.compute(points=pos[f], box=np.ascontiguousarray(box[f]), periodic=True, quantities="ijd")
        if a is not None:
            ti, tj = types[i], types[j]
            keep = ((ti == a) & (tj == b)) | ((ti == b) & (tj == a))
            d = d[keep]
        if molecules is not None:
            d = d[molecules[i] != molecules[j]]
        k = np.floor(d / bin_width).astype(np.int64)
        counts[f] = np.bincount(k[k < n_bins], minlength=n_bins)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return FrameSums(x=0.5 * (edges[1:] + edges[:-1]), num=counts, den=1.0 / np.abs(np.linalg.det(box)),
                     norm=n_pairs * shell)


def coordination_number(r: np.ndarray, g: np.ndarray, number_density: float, r_cut: float) -> float:
    """Mean number of neighbours within ``r_cut``: 4 pi rho int_0^r_cut g(r) r^2 dr.

    Parameters
    ----------
    r : (n_bins,) uniformly spaced bin centres, nm (as returned by ``rdf``).
    g : (n_bins,) g(r).
    number_density : partner beads per nm^3. For a like-pair g from ``rdf`` (normalised by
        N(N-1)/2 pairs) use (N - 1) / V to recover the exact mean neighbour count.
    r_cut : nm. Bins whose centre lies below ``r_cut`` are summed, each with its exact shell
        volume (so a delta-like peak in one bin integrates exactly).

    Returns
    -------
    float, neighbours per bead.
    """
    r = np.asarray(r, dtype=np.float64)
    dr = _uniform_spacing(r, "r")
    lo, hi = r - dr / 2, r + dr / 2
    shell = 4.0 / 3.0 * np.pi * (hi ** 3 - np.maximum(lo, 0.0) ** 3)
    sel = r < r_cut
    return float(number_density * np.sum(np.asarray(g)[sel] * shell[sel]))


def first_peak(r: np.ndarray, g: np.ndarray, smooth: float = 0.005) -> tuple[float, float]:
    """Position (nm) and height of the first peak of an RDF.

    The peak is *located* on a copy smoothed with a Gaussian of standard deviation ``smooth`` nm
    (0: no smoothing) as its first maximum above g = 1 with a prominence of at least 0.1 (the
    global maximum if there is none), so noise on the rising flank cannot fool it and a split first
    shell (methanol) gives its inner peak at every state point. Its position and height are then *measured* on the unsmoothed g, as the
    vertex of a least-squares parabola through the 2h + 1 samples around it,
    h = max(1, round(2 smooth / dr)) (5 samples for the defaults), which averages out bin noise
    without the height bias of smoothing.

    Returns
    -------
    (r_peak, g_peak) : nm, dimensionless.
    """
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    dr = _uniform_spacing(r, "r")
    gs = _gaussian_smooth(g, smooth / dr)
    k = _first_peak_index(gs)
    h = max(1, int(round(2 * smooth / dr)))
    lo, hi = max(0, k - h), min(len(g), k + h + 1)
    if hi - lo >= 3:
        x = (r[lo:hi] - r[k]) / dr
        c2, c1, c0 = np.polyfit(x, g[lo:hi], 2)
        if c2 < 0:
            off = float(np.clip(-c1 / (2 * c2), -h, h))
            return float(r[k] + off * dr), float(c0 + c1 * off + c2 * off * off)
    return float(r[k]), float(g[k])


def _first_peak_index(gs: np.ndarray, min_height: float = 1.0, min_prominence: float = 0.1) -> int:
    """Index of the first maximum of the smoothed ``gs`` that rises above ``min_height`` (the ideal-gas
    value 1: a real coordination shell) with at least ``min_prominence``; the global maximum if none.

    The first such peak, not the highest: in methanol the first shell is split into a hydrogen-bonded
    peak near 0.34 nm and a second near 0.45 nm of similar height, and taking the highest would jump
    between them from one state point to the next."""
    from scipy.signal import find_peaks

    k = int(np.argmax(gs))
    if not np.isfinite(gs[k]) or gs[k] <= 0:
        raise ValueError("g(r) has no positive values")
    peaks, _ = find_peaks(gs, height=min_height, prominence=min_prominence)
    return int(peaks[0]) if len(peaks) else k


def _parabola_vertex(x: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    if k <= 0 or k >= len(y) - 1:
        return float(x[k]), float(y[k])
    y0, y1, y2 = y[k - 1], y[k], y[k + 1]
    denom = y0 - 2 * y1 + y2
    if denom == 0:
        return float(x[k]), float(y1)
    off = 0.5 * (y0 - y2) / denom          # in units of the spacing, within (-1/2, 1/2] at an extremum
    off = float(np.clip(off, -0.5, 0.5))
    return float(x[k] + off * (x[k + 1] - x[k])), float(y1 - 0.25 * (y0 - y2) * off)


def first_minimum(r: np.ndarray, g: np.ndarray, smooth: float = 0.01, prominence: float = 0.03) -> float:
    """Position (nm) of the first minimum after the first peak of an RDF.

    Used as the first-coordination-shell cutoff for ``adf``. The curve is smoothed with a Gaussian
    of standard deviation ``smooth`` nm; the first peak is its highest sample (as in
    ``first_peak``); the first minimum is the first local minimum after it whose topographic
    prominence (its depth below the lower of the two maxima around it, as in
    scipy.signal.peak_prominences) is at least ``prominence`` (g units), refined to sub-bin
    resolution by a parabola through three samples. Shallow dips from noise on the falling flank
    are therefore skipped.

    Raises ValueError if there is no such minimum within the range of ``r``.
    """
    r = np.asarray(r, dtype=np.float64)
    dr = _uniform_spacing(r, "r")
    gs = _gaussian_smooth(g, smooth / dr)
    kp = _first_peak_index(gs)
    from scipy.signal import find_peaks

    minima = [m for m in find_peaks(-gs, prominence=prominence)[0] if m > kp]
    if not minima:
        raise ValueError("no minimum after the first peak of g(r) within the r range "
                         f"(prominence >= {prominence}); extend r_max or lower the prominence")
    return _parabola_vertex(r, gs, int(minima[0]))[0]


# ---------------------------------------------------------------------------------------------
# angular distribution function
# ---------------------------------------------------------------------------------------------
def _angles_one_frame(pos: np.ndarray, box: np.ndarray, nl, centres: np.ndarray | None = None) -> np.ndarray:
    i, vec = nl.compute(points=pos, box=np.ascontiguousarray(box), periodic=True, quantities="iD")
    if len(i) == 0:
        return np.zeros(0)
    order = np.argsort(i, kind="stable")
    i, vec = i[order], vec[order]
    n = len(pos)
    cnt = np.bincount(i, minlength=n)
    kmax = int(cnt.max())
    if kmax < 2:
        return np.zeros(0)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    slot = np.arange(len(i)) - start[i]
    unit = np.zeros((n, kmax, 3))
    unit[i, slot] = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    valid = np.zeros((n, kmax), dtype=bool)
    valid[i, slot] = True
    cos = np.einsum("nkd,nld->nkl", unit, unit)
    ku, lu = np.triu_indices(kmax, k=1)
    take = valid[:, ku] & valid[:, lu]
    if centres is not None:
        take &= centres[:, None]
    c = cos[:, ku, lu][take]
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def adf(positions: np.ndarray, boxes: np.ndarray, shell_cutoff: float, n_bins: int = 90,
        types: np.ndarray | None = None, centre: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Three-body angular distribution of the first coordination shell, a density over degrees.

    For every bead i and every unordered pair {j, k} of distinct beads with minimum-image
    distances |r_ij|, |r_ik| < ``shell_cutoff``, the angle theta_jik between r_ij and r_ik
    (vertex at i, 0 to 180 degrees) is histogrammed over all frames.

    Parameters
    ----------
    positions : (F, N, 3) array, nm (or (N, 3)).
    boxes : (F, 3, 3) array, nm, rows (or one (3, 3) box).
    shell_cutoff : nm; typically ``first_minimum`` of the bead-bead RDF. At most
        ``minimum_image_radius(boxes)``.
    n_bins : bins of width 180 / n_bins degrees on [0, 180].
    types, centre : optional (N,) bead types and one type: only angles whose vertex bead i has type
        ``centre`` (the neighbours j, k may have any type).

    Returns
    -------
    theta : (n_bins,) bin centres, degrees.
    p : (n_bins,) probability density, 1/degree, with sum(p) * (180 / n_bins) = 1 (all zeros if
        no bead has two neighbours). It is the plain distribution of angles, not divided by
        sin(theta): uncorrelated neighbours give p = (pi / 360) sin(theta).
    """
    sums = adf_frames(positions, boxes, shell_cutoff, n_bins=n_bins, types=types, centre=centre)
    return sums.x, sums.curve()


def adf_frames(positions: np.ndarray, boxes: np.ndarray, shell_cutoff: float, n_bins: int = 90,
               types: np.ndarray | None = None, centre: int | None = None) -> "FrameSums":
    """The ADF of ``adf`` (same arguments) kept frame by frame, for resampling (``bootstrap_metric``).

    Returns a :class:`FrameSums` with ``x`` the bin centres (degrees), ``num[f, k]`` the angles of frame
    f in bin k, ``den[f]`` the angles of frame f and ``norm`` the bin width (degrees), so that
    ``curve()`` is ``adf``'s p and ``curve(weights)`` the p of any resample of frames.
    """
    pos, box = _frames(positions, boxes)
    limit = minimum_image_radius(box)
    if not 0 < shell_cutoff <= limit * (1 + 1e-9):
        raise ValueError(f"shell_cutoff = {shell_cutoff} nm must be positive and at most the "
                         f"minimum-image radius {limit:.4f} nm")
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ValueError("n_bins must be positive")
    nl = _neighbor_list(True, shell_cutoff)
    width = 180.0 / n_bins
    counts = np.zeros((pos.shape[0], n_bins), dtype=np.float64)
    centres = None
    if centre is not None:
        if types is None:
            raise ValueError("centre needs types (the bead type of each bead)")
        centres = np.asarray(types) == int(centre)
    for f in range(pos.shape[0]):
        ang = _angles_one_frame(pos[f], box[f], nl, centres)
        k = np.minimum(np.floor(ang / width).astype(np.int64), n_bins - 1)   # 180 deg -> last bin
        counts[f] = np.bincount(k, minlength=n_bins)
    theta = (np.arange(n_bins) + 0.5) * width
    return FrameSums(x=theta, num=counts, den=counts.sum(axis=1), norm=np.full(n_bins, width))


# ---------------------------------------------------------------------------------------------
# density and error bars
# ---------------------------------------------------------------------------------------------
def density(boxes: np.ndarray, total_mass_amu: float) -> np.ndarray:
    """Mass density of each frame, g/cm^3, shape (F,).

    boxes : (F, 3, 3) (or (3, 3)) nm, rows; total_mass_amu : mass of all beads (= all atoms), amu.
    rho_f = total_mass_amu / N_A / (|det box_f| * 1e-21 cm^3/nm^3).
    """
    box = np.asarray(boxes, dtype=np.float64).reshape(-1, 3, 3)
    vol_cm3 = np.abs(np.linalg.det(box)) * 1e-21
    return float(total_mass_amu) / AVOGADRO / vol_cm3


def block_average(x: np.ndarray, n_blocks: int = 10) -> tuple[Any, Any]:
    """Mean and standard error of a time series from non-overlapping block means.

    The series (axis 0 is time; further axes, e.g. an RDF per frame, are averaged element-wise)
    is cut into ``n_blocks`` contiguous blocks of equal length L = len(x) // n_blocks; the
    len(x) - n_blocks * L leftover samples are dropped from the *start* (the least equilibrated
    part). Returns (mean of the kept samples, std(block means, ddof=1) / sqrt(n_blocks)).

    When L is much longer than the correlation time the block means are independent and the
    standard error is honest; for correlated data it is larger than the naive
    std(x) / sqrt(len(x)) by about sqrt(statistical inefficiency). With n_blocks blocks the error
    estimate itself has a relative uncertainty of about 1 / sqrt(2 (n_blocks - 1)) (24 % for 10).
    """
    x = np.asarray(x, dtype=np.float64)
    n_blocks = int(n_blocks)
    if n_blocks < 2:
        raise ValueError("n_blocks must be at least 2")
    if x.shape[0] < n_blocks:
        raise ValueError(f"{x.shape[0]} samples cannot fill {n_blocks} blocks")
    length = x.shape[0] // n_blocks
    kept = x[x.shape[0] - n_blocks * length:]
    means = kept.reshape((n_blocks, length) + x.shape[1:]).mean(axis=1)
    mean = kept.mean(axis=0)
    se = means.std(axis=0, ddof=1) / math.sqrt(n_blocks)
    if np.ndim(mean) == 0:
        return float(mean), float(se)
    return mean, se


def statistical_inefficiency(x: np.ndarray, mintime: int = 3) -> float:
    """Statistical inefficiency g = 1 + 2 tau of a scalar time series (samples per independent one).

    g = 1 + 2 sum_{t=1}^{T} (1 - t/n) C(t), with C the normalised autocorrelation function
    (computed by FFT) and T the lag before C(t) first drops to or below zero, lags < ``mintime``
    always included (the estimator of Chodera et al., J. Chem. Theory Comput. 3, 26 (2007), as in
    pymbar's ``statisticalInefficiency``). Returns >= 1; 1 for a constant series. The standard
    error of the mean is then std(x) sqrt(g / n).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    if n < 2:
        raise ValueError("need at least 2 samples")
    dx = x - x.mean()
    var = float(dx @ dx) / n
    if var == 0:
        return 1.0
    size = 1 << (2 * n - 1).bit_length()
    spec = np.fft.rfft(dx, size)
    acov = np.fft.irfft(spec * np.conj(spec), size)[:n] / np.arange(n, 0, -1)
    c = acov / var
    g = 1.0
    for t in range(1, n - 1):
        if c[t] <= 0 and t >= mintime:
            break
        g += 2.0 * c[t] * (1.0 - t / n)
    return max(1.0, float(g))


def series_mean_se(x: np.ndarray, n_blocks: int) -> tuple[float, float | None, int | None]:
    """Block-averaged mean and standard error of a scalar time series, with the blocks actually used.

    :param x: (n_samples,) series in any unit (e.g. per-frame densities in g/cm^3 or pressures in bar).
    :param n_blocks: the wanted number of blocks; at most ``len(x) // 2`` are used (two samples a block).
    :return: (mean, standard error, blocks) in the unit of ``x``; (plain mean, None, None) when fewer than
        two blocks fit. The error is that of :func:`block_average`.
    """
    x = np.asarray(x, dtype=np.float64)
    blocks = min(n_blocks, len(x) // 2)
    if blocks < 2:
        return float(np.mean(x)), None, None
    mean, se = block_average(x, blocks)
    return float(mean), float(se), blocks


def block_drift(x: np.ndarray, n_blocks: int, tolerance: float = 0.01) -> tuple[float, float] | None:
    """Whether a scalar time series still drifts: its block means change monotonically over the run.

    :param x: (n_samples,) series (any unit), cut into ``min(n_blocks, len(x) // 2)`` contiguous blocks
        (leftover samples dropped from the start, as in :func:`block_average`).
    :param tolerance: the smallest relative change |last - first| / |mean| that counts as a drift.
    :return: (first, last) block mean, in the unit of ``x``, when the block means rise or fall at every
        block and change by more than ``tolerance``; None otherwise or with fewer than 3 blocks. A
        stationary series has monotonic block means with probability 2 / n_blocks! (2 % for 5 blocks).
    """
    x = np.asarray(x, dtype=np.float64)
    n = min(n_blocks, len(x) // 2)
    if n < 3:
        return None
    length = len(x) // n
    means = x[len(x) - n * length:].reshape(n, length).mean(axis=1)
    steps = np.diff(means)
    if (np.all(steps > 0) or np.all(steps < 0)) and abs(means[-1] - means[0]) > tolerance * abs(means.mean()):
        return float(means[0]), float(means[-1])
    return None


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def rdf_metrics(r: np.ndarray, g_ref: np.ndarray, g_cg: np.ndarray, smooth: float = 0.005) -> dict[str, float]:
    """How far a CG g(r) is from the reference, on one common r grid (nm).

    Keys (all floats):

    * ``mad``: mean absolute deviation, mean of |g_cg - g_ref| over the bins where
      max(g_ref, g_cg) > 0 (the excluded-volume core where both are 0 is left out, so the value
      does not depend on how much empty core the grid includes).
    * ``max_abs_dev``: max over all bins of |g_cg - g_ref|.
    * ``rmsd``: root-mean-square of g_cg - g_ref over the same bins as ``mad``.
    * ``peak_r_ref``, ``peak_r_cg`` (nm) and ``peak_g_ref``, ``peak_g_cg``: first peak of each
      curve from ``first_peak`` (located on a copy smoothed by a Gaussian of ``smooth`` nm,
      default 0.005 nm; measured on the raw curve by a least-squares parabola through 5 bins).
    * ``peak_position_error``: peak_r_cg - peak_r_ref, nm (signed; > 0: CG peak further out).
    * ``peak_height_error``: peak_g_cg - peak_g_ref (signed; > 0: CG more structured).
    """
    r = np.asarray(r, dtype=np.float64)
    g_ref = np.asarray(g_ref, dtype=np.float64)
    g_cg = np.asarray(g_cg, dtype=np.float64)
    if not (r.shape == g_ref.shape == g_cg.shape) or r.ndim != 1:
        raise ValueError(f"r, g_ref, g_cg must be 1-D and share one grid; got {r.shape}, "
                         f"{g_ref.shape}, {g_cg.shape}")
    distances = _rdf_distances(g_ref, g_cg)
    pr, hr = first_peak(r, g_ref, smooth)
    pc, hc = first_peak(r, g_cg, smooth)
    return {
        **distances,
        "peak_r_ref": pr, "peak_r_cg": pc, "peak_g_ref": hr, "peak_g_cg": hc,
        "peak_position_error": pc - pr,
        "peak_height_error": hc - hr,
    }


def _rdf_distances(g_ref: np.ndarray, g_cg: np.ndarray) -> dict[str, float]:
    """``mad``, ``max_abs_dev`` and ``rmsd`` of ``rdf_metrics`` (same grid assumed)."""
    diff = g_cg - g_ref
    support = np.maximum(g_ref, g_cg) > 0
    if not support.any():
        raise ValueError("both RDFs are zero everywhere")
    return {
        "mad": float(np.mean(np.abs(diff[support]))),
        "max_abs_dev": float(np.max(np.abs(diff))),
        "rmsd": float(np.sqrt(np.mean(diff[support] ** 2))),
    }


def adf_l1(p_ref: np.ndarray, p_cg: np.ndarray, theta: np.ndarray) -> float:
    """L1 distance between two angular distributions on one uniform grid of bin centres (degrees).

    Each distribution is first renormalised to sum(p) * dtheta = 1; the result is
    sum |p_cg - p_ref| * dtheta: 0 for identical distributions, 2 for disjoint ones (twice the
    total-variation distance).
    """
    theta = np.asarray(theta, dtype=np.float64)
    dth = _uniform_spacing(theta, "theta")
    out = []
    for name, p in (("p_ref", p_ref), ("p_cg", p_cg)):
        p = np.asarray(p, dtype=np.float64)
        if p.shape != theta.shape:
            raise ValueError(f"{name} has shape {p.shape}, theta has {theta.shape}")
        mass = p.sum() * dth
        if not mass > 0:
            raise ValueError(f"{name} has no probability mass")
        out.append(p / mass)
    return float(np.sum(np.abs(out[1] - out[0])) * dth)


def density_error(cg_mean: float, cg_se: float, ref_mean: float, ref_se: float) -> dict[str, float]:
    """CG density against the reference, with first-order propagated standard errors.

    Keys: ``abs_error`` = cg - ref (g/cm^3), ``abs_error_se`` = sqrt(cg_se^2 + ref_se^2);
    ``relative_error`` = cg / ref - 1, ``relative_error_se`` =
    |cg / ref| sqrt((cg_se / cg)^2 + (ref_se / ref)^2) (independent errors, first order);
    ``z`` = abs_error / abs_error_se (inf if the errors are 0 and the means differ, 0 if equal).
    """
    cg, ref = float(cg_mean), float(ref_mean)
    if ref == 0 or cg == 0:
        raise ValueError("densities must be non-zero")
    se = math.hypot(cg_se, ref_se)
    diff = cg - ref
    ratio = cg / ref
    return {
        "abs_error": diff,
        "abs_error_se": se,
        "relative_error": ratio - 1.0,
        "relative_error_se": abs(ratio) * math.hypot(cg_se / cg, ref_se / ref),
        "z": diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff)),
    }


# ---------------------------------------------------------------------------------------------
# uncertainty: block bootstrap standard errors and noise floors
# ---------------------------------------------------------------------------------------------
# Every structural curve here is a ratio of sums over frames (``FrameSums``), so a resample of
# frames gives its curve from the per-frame sums alone, without a second pass over positions. The
# frames of a trajectory are correlated; ``plan_blocks`` cuts a trajectory into contiguous blocks
# a few integrated autocorrelation times long, whose sums are then nearly independent, and
# ``bootstrap_metric`` resamples those blocks with replacement, on both sides of a comparison
# independently, and recomputes the metric: its standard error is the spread over the resamples.
#
# A distance metric (RDF MAD, ADF L1, ...) is > 0 even between two samples of one distribution:
# noise alone puts |g_1 - g_2| above 0. ``noise_floor`` measures that level with the same metric
# between two independent halves of the reference (or two independent reference runs), scaled to
# the noise of the actual comparison. A model's error is real only when it exceeds its floor by
# more than the combined uncertainty (``significant_difference``).

@dataclass(frozen=True, eq=False)
class FrameSums:
    """A frame-averaged curve kept frame by frame, so that any resample of frames gives its curve.

    ``curve(w) = sum_f w_f num[f] / (norm * sum_f w_f den[f])`` with frame weights ``w`` (how often
    each frame occurs in a resample; all ones by default). A zero denominator sum gives a zero curve
    (an ADF without any angle).

    x : (B,) the grid: bin centres (nm for an RDF, degrees for an ADF, 0..B-1 for a plain series).
    num : (F, B) float, per-frame numerators (pair or angle counts per bin, or the series itself).
    den : (F,) float, per-frame denominators (1/V_f in nm^-3 for an RDF, angles per frame for an
        ADF, 1 for a plain series).
    norm : (B,) float, a constant divisor (n_pairs times the shell volume for an RDF, the bin width
        for an ADF, 1 for a plain series).
    """

    x: np.ndarray
    num: np.ndarray
    den: np.ndarray
    norm: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64)
        num = np.asarray(self.num, dtype=np.float64)
        den = np.asarray(self.den, dtype=np.float64)
        norm = np.broadcast_to(np.asarray(self.norm, dtype=np.float64), x.shape)
        if x.ndim != 1 or num.ndim != 2 or num.shape[1] != len(x) or den.shape != (num.shape[0],):
            raise ValueError(f"FrameSums needs x (B,), num (F, B), den (F,); got {x.shape}, {num.shape}, {den.shape}")
        for name, value in (("x", x), ("num", num), ("den", den), ("norm", norm)):
            object.__setattr__(self, name, value)

    @classmethod
    def of_series(cls, values: np.ndarray) -> "FrameSums":
        """A per-frame series, (F,) or (F, B), whose curve is its mean over frames (e.g. the density)."""
        v = np.asarray(values, dtype=np.float64)
        v = v.reshape(len(v), -1)
        return cls(x=np.arange(v.shape[1], dtype=np.float64), num=v, den=np.ones(len(v)), norm=np.ones(v.shape[1]))

    @property
    def n_frames(self) -> int:
        return int(self.num.shape[0])

    def curve(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(B,) the curve of all frames (or of frames weighted by ``weights``, shape (F,))."""
        if weights is None:
            return self._ratio(self.num.sum(axis=0)[None], np.array([self.den.sum()]))[0]
        return self.curves(np.asarray(weights, dtype=np.float64)[None])[0]

    def curves(self, weights: np.ndarray) -> np.ndarray:
        """(R, B) one curve per row of frame weights ``weights`` (R, F)."""
        w = np.asarray(weights, dtype=np.float64)
        return self._ratio(w @ self.num, w @ self.den)

    def _ratio(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.zeros_like(num)
        ok = den > 0
        out[ok] = num[ok] / (self.norm * den[ok, None])
        return out

    def per_frame(self) -> np.ndarray:
        """(F, B) the curve of every single frame (0 where a frame's denominator is 0)."""
        return self._ratio(self.num, self.den)

    def frames(self, start: int, stop: int) -> "FrameSums":
        """The frames start..stop-1 only."""
        return FrameSums(self.x, self.num[start:stop], self.den[start:stop], self.norm)

    def blocked(self, plan: "BlockPlan") -> "FrameSums":
        """One 'frame' per block of ``plan``: the sums over its frames (leftover frames dropped)."""
        if plan.n_frames != self.n_frames:
            raise ValueError(f"the block plan is for {plan.n_frames} frames, these sums have {self.n_frames}")
        sl = slice(plan.start, plan.n_frames)
        num = self.num[sl].reshape(plan.n_blocks, plan.length, -1).sum(axis=1)
        den = self.den[sl].reshape(plan.n_blocks, plan.length).sum(axis=1)
        return FrameSums(self.x, num, den, self.norm)


@dataclass(frozen=True)
class BlockPlan:
    """How a trajectory of ``n_frames`` frames is cut into ``n_blocks`` contiguous blocks of ``length``
    frames. The ``n_frames - n_blocks * length`` leftover frames are dropped from the start (the least
    equilibrated part), as in ``block_average``.

    statistical_inefficiency : g = 1 + 2 tau_int, in frames, of the series the plan was made from.
    independent : True when the blocks are long enough (``plan_blocks``' ``factor`` x g frames) to
        treat their sums as independent; False when the trajectory was too short for that many
        such blocks and they were shortened to fit: standard errors are then too small.
    """

    n_frames: int
    length: int
    n_blocks: int
    statistical_inefficiency: float = 1.0
    independent: bool = True

    def __post_init__(self) -> None:
        if self.length < 1 or self.n_blocks < 2 or self.length * self.n_blocks > self.n_frames:
            raise ValueError(f"cannot cut {self.n_frames} frames into {self.n_blocks} blocks of {self.length}")

    @property
    def start(self) -> int:
        """The first frame used (the leftover frames before it are dropped)."""
        return self.n_frames - self.n_blocks * self.length

    @property
    def n_effective(self) -> float:
        """Independent samples in the whole trajectory: n_frames / g."""
        return self.n_frames / max(1.0, self.statistical_inefficiency)

    def resample(self, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
        """(R, n_blocks) int: how often each block is drawn in each of R resamples of n_blocks draws."""
        draws = rng.integers(0, self.n_blocks, size=(int(n_resamples), self.n_blocks))
        out = np.zeros((int(n_resamples), self.n_blocks), dtype=np.int64)
        np.add.at(out, (np.arange(int(n_resamples))[:, None], draws), 1)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"n_frames": self.n_frames, "block_length": self.length, "n_blocks": self.n_blocks,
                "statistical_inefficiency": float(self.statistical_inefficiency), "independent": self.independent}


def block_observables(*sums: FrameSums, series: Iterable[np.ndarray] = (), n_windows: int = 4) -> np.ndarray:
    """(F, k) per-frame scalars whose autocorrelation sets the block length of a trajectory.

    For each curve in ``sums`` (all over the same F frames): its per-frame value summed over
    ``n_windows`` contiguous windows of the bins where any frame is non-zero (e.g. core, first shell,
    second shell, tail of an RDF); further per-frame ``series`` (e.g. the density of an NPT run)
    are appended as they are. Windows rather than single bins: a single bin of a single frame is
    dominated by counting noise, which hides the slow structural fluctuations.
    """
    cols: list[np.ndarray] = []
    for s in sums:
        per = s.per_frame()
        support = np.nonzero(np.any(s.num != 0, axis=0))[0]
        if len(support):
            for chunk in np.array_split(support, min(int(n_windows), len(support))):
                cols.append(per[:, chunk].sum(axis=1))
    cols += [np.asarray(x, dtype=np.float64).ravel() for x in series]
    if not cols:
        raise ValueError("no per-frame observables to set the block length from")
    n = {len(c) for c in cols}
    if len(n) != 1:
        raise ValueError(f"the per-frame observables cover different numbers of frames: {sorted(n)}")
    return np.stack(cols, axis=1)


def plan_blocks(observables: np.ndarray, min_blocks: int = 8, factor: float = 3.0) -> BlockPlan:
    """Blocks for the block bootstrap of a trajectory, from its integrated autocorrelation time.

    observables : (F,) or (F, k) per-frame scalars of the trajectory (``block_observables``).

    The statistical inefficiency g = 1 + 2 tau_int (frames; ``statistical_inefficiency``) is taken as
    the largest over the k series, and blocks are L = ceil(factor * g) frames long, as many as fit.
    Why ``factor`` = 3: for an exponentially decaying autocorrelation the variance of a mean over
    blocks of L frames is too small by about g / (2 L) (relative), so blocks of 3 g leave the
    standard error about 8 % low (blocks of g: 25 % low), while longer blocks leave fewer of them
    and a noisier standard error (relative uncertainty about 1 / sqrt(2 (n_blocks - 1))); the
    bootstrap over n blocks also gives (n - 1) / n of the variance (its standard error 6 % low for
    8 blocks, under 2 % for 30), which is left uncorrected.

    Too few frames: when fewer than ``min_blocks`` such blocks fit, the trajectory is cut into
    ``min_blocks`` shorter blocks instead and the plan says ``independent=False``: the blocks are
    then correlated and the standard errors underestimate the truth (by up to sqrt(g) when the
    blocks are single frames); the harness records a note asking for longer runs. Fewer frames than
    ``min_blocks`` raises ValueError.
    """
    x = np.asarray(observables, dtype=np.float64)
    x = x.reshape(len(x), -1)
    n = len(x)
    min_blocks = int(min_blocks)
    if min_blocks < 2:
        raise ValueError("min_blocks must be at least 2")
    if n < min_blocks:
        raise ValueError(f"{n} frames cannot make {min_blocks} blocks for the bootstrap; record more frames")
    g = max(statistical_inefficiency(col) for col in x.T)
    length = max(1, int(math.ceil(factor * g - 1e-9)))
    if n // length >= min_blocks:
        return BlockPlan(n, length, n // length, g, True)
    return BlockPlan(n, n // min_blocks, min_blocks, g, False)


def _as_list(sums: FrameSums | Sequence[FrameSums]) -> list[FrameSums]:
    out = [sums] if isinstance(sums, FrameSums) else list(sums)
    if not out:
        raise ValueError("no curves to resample")
    return out


def _metric_dict(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): (float(v) if v is not None else math.nan) for k, v in value.items()}
    return {"value": float(value)}


def bootstrap_metric(metric: Any, ref: FrameSums | Sequence[FrameSums], cg: FrameSums | Sequence[FrameSums],
                     ref_plan: BlockPlan, cg_plan: BlockPlan, n_resamples: int = 200, seed: int = 0,
                     max_failed: float = 0.1) -> dict[str, Any]:
    """A metric comparing two trajectories and its block-bootstrap standard error.

    metric : callable(ref_curves, cg_curves) -> {name: float} (or one float, named "value"); the
        arguments are lists of (B,) curves, one per entry of ``ref`` / ``cg``.
    ref, cg : one ``FrameSums`` or a list of them, over the frames of one trajectory each.
    ref_plan, cg_plan : the ``BlockPlan`` of each trajectory.

    Each of ``n_resamples`` resamples draws ``n_blocks`` blocks with replacement, independently on the
    two sides, rebuilds every curve from the drawn blocks and evaluates the metric; the standard
    error of each key is the standard deviation (ddof=1) over resamples. A resample where the metric
    raises ValueError or gives a non-finite number is left out; a key left out in more than
    ``max_failed`` of the resamples gets None. Deterministic for a given ``seed``.

    Returns {"value": {name: metric of all frames}, "se": {name: float or None}, "n_resamples": R}.
    The value uses every frame (leftover frames included), the resamples only the blocked ones.

    For a smooth metric (a mean, a density difference) this is the usual block-bootstrap standard
    error. For a distance such as the RDF MAD it is conservative: in bins where the two curves agree
    within their noise, |g_cg - g_ref| is not smooth in the data and resampling adds noise to noise.
    On synthetic data with a known answer it came out about 1.4x the true spread for two samples of
    one distribution and 1.0 to 1.1x for a clear difference (tests/test_uncertainty.py).
    """
    refs, cgs = _as_list(ref), _as_list(cg)
    value = _metric_dict(metric([s.curve() for s in refs], [s.curve() for s in cgs]))
    rng = np.random.default_rng(seed)
    w_ref = ref_plan.resample(rng, n_resamples)
    w_cg = cg_plan.resample(rng, n_resamples)
    ref_curves = [s.blocked(ref_plan).curves(w_ref) for s in refs]
    cg_curves = [s.blocked(cg_plan).curves(w_cg) for s in cgs]
    samples = {k: np.full(int(n_resamples), np.nan) for k in value}
    for i in range(int(n_resamples)):
        try:
            got = _metric_dict(metric([c[i] for c in ref_curves], [c[i] for c in cg_curves]))
        except ValueError:
            continue
        for k in samples:
            samples[k][i] = got.get(k, math.nan)
    se: dict[str, float | None] = {}
    for k, x in samples.items():
        ok = x[np.isfinite(x)]
        se[k] = float(np.std(ok, ddof=1)) if len(ok) >= max(2, (1 - max_failed) * len(x)) else None
    return {"value": value, "se": se, "n_resamples": int(n_resamples)}


def noise_floor(metric: Any, ref: FrameSums | Sequence[FrameSums], ref_plan: BlockPlan,
                cg_plan: BlockPlan | None = None, other: FrameSums | Sequence[FrameSums] | None = None,
                other_plan: BlockPlan | None = None, n_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """The level a distance metric reaches from sampling noise alone, at one state point.

    Without ``other``: the metric between the first and the second half of the reference (the
    blocks of ``ref_plan``, split in two; with an odd number of blocks the middle one is left out,
    which also decorrelates the halves). With ``other`` (the same curves from an independent
    reference run of the same state point, and its ``other_plan``): the metric between the two runs.
    Each side is block-bootstrapped as in ``bootstrap_metric``.

    Scaling. Noise in a curve averaged over n independent samples has a standard deviation
    proportional to 1/sqrt(n), and a distance such as mean |g_1 - g_2| between two noisy curves
    scales with the noise of their difference, sqrt(1/n_1 + 1/n_2). The two halves hold half the
    reference each, so their raw distance is larger than the noise level of the actual comparison
    (the whole reference against a CG run): by sqrt(2) when the CG run is as long (in independent
    samples) as the reference. The floor is therefore reported scaled to the comparison,

        value = raw * sqrt((1/n_ref + 1/n_cg) / (1/n_a + 1/n_b)),

    with n = frames / statistical inefficiency of each trajectory (``BlockPlan.n_effective``;
    n_cg = n_ref when ``cg_plan`` is None), so that it can be compared directly with the metric of
    the model (whose expected value for a perfect model it estimates). ``raw`` and ``scale`` are
    kept too. Apply it to distance metrics only (>= 0, noise-dominated for identical distributions:
    MAD, RMSD, max |dg|, ADF L1); a signed error (peak shift, density error) has expectation 0 for a
    perfect model, so its standard error alone says whether it is real. A reference that still drifts
    makes its halves differ more, which raises the floor: that is a warning in itself.

    Returns {"method": "halves" or "independent runs", "value": {name: scaled floor},
    "se": {name: its scaled bootstrap standard error or None}, "raw": {...}, "raw_se": {...},
    "scale": float, "n_blocks": [blocks of side a, of side b], "n_resamples": R}.
    """
    refs = _as_list(ref)
    if other is None:
        n = ref_plan.n_blocks
        half = n // 2
        if half < 2:
            raise ValueError(f"{n} blocks cannot be split into two halves of at least 2 blocks; record more frames")
        length, start = ref_plan.length, ref_plan.start
        a = [s.frames(start, start + half * length) for s in refs]
        b = [s.frames(start + (n - half) * length, start + n * length) for s in refs]
        g = ref_plan.statistical_inefficiency
        plan_a = plan_b = BlockPlan(half * length, length, half, g, ref_plan.independent)
        method = "halves"
    else:
        if other_plan is None:
            raise ValueError("an independent reference run needs its block plan (other_plan)")
        a, b, plan_a, plan_b = refs, _as_list(other), ref_plan, other_plan
        method = "independent runs"
    raw = bootstrap_metric(metric, a, b, plan_a, plan_b, n_resamples=n_resamples, seed=seed)
    n_ref = ref_plan.n_effective
    n_cg = cg_plan.n_effective if cg_plan is not None else n_ref
    scale = math.sqrt((1.0 / n_ref + 1.0 / n_cg) / (1.0 / plan_a.n_effective + 1.0 / plan_b.n_effective))
    return {"method": method,
            "value": {k: (v * scale if math.isfinite(v) else None) for k, v in raw["value"].items()},
            "se": {k: (v * scale if v is not None else None) for k, v in raw["se"].items()},
            "raw": raw["value"], "raw_se": raw["se"], "scale": scale,
            "n_blocks": [plan_a.n_blocks, plan_b.n_blocks], "n_resamples": raw["n_resamples"]}


def significant_difference(a: float | None, se_a: float | None, b: float | None = 0.0, se_b: float | None = 0.0,
                           n_sigma: float = 2.0) -> int | None:
    """Whether a and b differ by more than ``n_sigma`` combined standard errors.

    +1 if a - b > n_sigma sqrt(se_a^2 + se_b^2), -1 if b - a exceeds it, 0 if neither (the data
    cannot tell), None if any input is missing (None or NaN). With b a noise floor and se_b its
    error: +1 means the error a is real.
    """
    vals = (a, se_a, b, se_b)
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        return None
    bound = n_sigma * math.hypot(float(se_a), float(se_b))
    d = float(a) - float(b)
    return 1 if d > bound else (-1 if -d > bound else 0)


def rdf_comparison(r: np.ndarray, smooth: float = 0.005):
    """The metric ``rdf_metrics`` on the grid r, as ``bootstrap_metric`` calls it (one curve per side)."""
    return lambda ref, cg: rdf_metrics(r, ref[0], cg[0], smooth)


def rdf_distances(ref: Sequence[np.ndarray], cg: Sequence[np.ndarray]) -> dict[str, float]:
    """The distance part of ``rdf_metrics`` (``mad``, ``max_abs_dev``, ``rmsd``) for ``noise_floor``;
    every further curve pair (e.g. partial RDFs) adds ``mad_<i>``."""
    out = _rdf_distances(np.asarray(ref[0]), np.asarray(cg[0]))
    for i in range(1, len(ref)):
        out[f"mad_{i}"] = _rdf_distances(np.asarray(ref[i]), np.asarray(cg[i]))["mad"]
    return out


def adf_comparison(theta: np.ndarray):
    """``adf_l1`` on the grid theta as ``bootstrap_metric`` calls it: {"l1": ...}."""
    return lambda ref, cg: {"l1": adf_l1(ref[0], cg[0], theta)}


def density_comparison(ref: Sequence[np.ndarray], cg: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean CG density against the reference (``FrameSums.of_series`` of each per-frame density):
    ``abs_error`` (g/cm^3) and ``relative_error``, as in ``density_error``."""
    d = density_error(float(cg[0][0]), 0.0, float(ref[0][0]), 0.0)
    return {"abs_error": d["abs_error"], "relative_error": d["relative_error"]}


def comparison_uncertainty(ref: Mapping[str, FrameSums], cg: Mapping[str, FrameSums] | None = None, *,
                           n_resamples: int = 200, seed: int = 0, min_blocks: int = 8,
                           factor: float = 3.0) -> dict[str, Any]:
    """Standard errors and noise floors of every metric of one reference/CG comparison.

    ref, cg : curves of each trajectory by name, all over that trajectory's frames. A name
        starting with "rdf" holds ``rdf_frames`` (metrics: ``rdf_metrics``, or its distances alone
        when a curve has no first peak), one starting with "adf" holds ``adf_frames`` (``adf_l1``),
        "density" holds ``FrameSums.of_series`` of the per-frame density, g/cm^3
        (``density_comparison``). E.g. {"rdf": ..., "adf": ..., "density": ..., "rdf A-B": ...}.
        ``cg`` may be None or lack names (a CG run that blew up): those get floors only.

    The block length of each trajectory comes from all its curves together (``block_observables``,
    ``plan_blocks``), so one plan serves every metric. Every metric is resampled with the same
    ``seed``. Floors (``noise_floor``, two halves of the reference) are computed for the distance
    metrics only (RDF mad/max_abs_dev/rmsd, ADF l1); signed errors are judged by their SE alone.

    Returns {"blocks": {"reference": BlockPlan.to_dict(), "cg": ... or None}, "n_resamples", "seed",
    "floor_method", "floor_scale", "notes": [str], "metrics": {name: {"se": {key: SE},
    "noise_floor": {key: floor}, "noise_floor_se": {key: SE of the floor}}}, "curve_se": {name:
    {"reference": (B,), "cg": (B,)}} (per-bin standard errors of each curve, ``curve_se``, for bands in
    plots)}; a value that could not be computed is None or absent (e.g. too few frames for
    ``min_blocks`` blocks: then "notes" says why).
    """
    cg = dict(cg or {})
    out: dict[str, Any] = {"blocks": {"reference": None, "cg": None}, "n_resamples": int(n_resamples),
                           "seed": int(seed), "floor_method": None, "floor_scale": None, "notes": [],
                           "metrics": {name: {"se": {}, "noise_floor": {}, "noise_floor_se": {}} for name in ref},
                           "curve_se": {name: {} for name in ref}}
    plans: dict[str, BlockPlan | None] = {}
    names = {"reference": "all-atom reference", "cg": "CG"}
    for side, sums in (("reference", ref), ("cg", cg)):
        plans[side] = None
        if not sums:
            continue
        try:
            plans[side] = plan_blocks(block_observables(*sums.values()), min_blocks=min_blocks, factor=factor)
        except ValueError as exc:
            out["notes"].append(f"no error bars from the {names[side]} run: {exc}")
            continue
        out["blocks"][side] = plans[side].to_dict()
        if not plans[side].independent:
            out["notes"].append(
                f"the {names[side]} run is short for its correlation time ({plans[side].n_frames} frames, statistical "
                f"inefficiency {plans[side].statistical_inefficiency:.1f} frames): its {min_blocks} blocks are shorter "
                f"than {factor:g} correlation times, so the error bars are too small; run longer")
    p_ref, p_cg = plans["reference"], plans["cg"]
    if p_ref is not None and p_ref.n_blocks // 2 < 2:
        out["notes"].append(f"no noise floor: {p_ref.n_blocks} blocks cannot be split into two halves of at least "
                            "2 blocks; record more frames")
        p_floor = None
    else:
        p_floor = p_ref
    for name, sums in ref.items():
        for side, plan, own in (("reference", p_ref, sums), ("cg", p_cg, cg.get(name))):
            if plan is not None and own is not None:
                out["curve_se"][name][side] = curve_se(own, plan, n_resamples, seed)
        entry = out["metrics"][name]
        comparison, distance = _metric_functions(name, sums.x)
        if p_ref is not None and p_cg is not None and name in cg:
            for metric in (comparison, distance):
                if metric is None:
                    continue
                try:
                    entry["se"] = bootstrap_metric(metric, sums, cg[name], p_ref, p_cg, n_resamples, seed)["se"]
                    break
                except ValueError:
                    continue
        if distance is not None and p_floor is not None:
            try:
                floor = noise_floor(distance, sums, p_floor, cg_plan=p_cg, n_resamples=n_resamples, seed=seed)
            except ValueError:       # the metric itself failed (e.g. an ADF without angles): no floor
                continue
            entry["noise_floor"], entry["noise_floor_se"] = floor["value"], floor["se"]
            out["floor_method"], out["floor_scale"] = floor["method"], floor["scale"]
    return out


def curve_se(sums: FrameSums, plan: BlockPlan, n_resamples: int = 200, seed: int = 0) -> np.ndarray:
    """(B,) block-bootstrap standard error of every bin of a curve (e.g. of g(r) at each r), in the
    curve's unit: the spread over ``n_resamples`` resamples of the blocks of ``plan``."""
    weights = plan.resample(np.random.default_rng(seed), n_resamples)
    return np.std(sums.blocked(plan).curves(weights), axis=0, ddof=1)


def _metric_functions(name: str, x: np.ndarray):
    """(metric for the SE, distance metric for the floor or None) of a curve named as in
    ``comparison_uncertainty``."""
    if name.startswith("rdf"):
        return rdf_comparison(x), rdf_distances
    if name.startswith("adf"):
        return adf_comparison(x), adf_comparison(x)
    if name.startswith("density"):
        return density_comparison, None
    raise ValueError(f"unknown curve name {name!r}: start it with 'rdf', 'adf' or 'density'")


_PLOTS = ("plot_rdfs", "plot_adfs", "plot_density_vs_temperature")


def __getattr__(name: str) -> Any:
    """The plots moved to :mod:`openmm_cgnn.reporting`; ``analysis.plot_rdfs`` etc. still work."""
    if name in _PLOTS:
        from . import reporting

        return getattr(reporting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
