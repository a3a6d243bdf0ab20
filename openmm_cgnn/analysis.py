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

There is deliberately no CG pressure estimator: the GNN energy is many-body, so the virial needs
dU/d(pair vector) for every neighbour-list edge (or the derivative with respect to the box), which
per-bead forces, positions and box alone do not determine.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .units import AVOGADRO

__all__ = [
    "minimum_image_radius", "rdf", "coordination_number", "first_peak", "first_minimum",
    "adf", "density", "block_average", "statistical_inefficiency", "series_mean_se", "block_drift",
    "rdf_metrics", "adf_l1", "density_error",
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
    """Gaussian smoothing (edges padded with the end values), like scipy's gaussian_filter1d."""
    y = np.asarray(y, dtype=np.float64)
    if sigma_bins <= 0:
        return y
    half = int(4 * sigma_bins + 0.5)
    x = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (x / sigma_bins) ** 2)
    kernel /= kernel.sum()
    return np.convolve(np.pad(y, half, mode="edge"), kernel, mode="valid")


def _local_maxima(y: np.ndarray) -> np.ndarray:
    """Interior indices k with y[k-1] < y[k] >= y[k+1] (the left end of a flat top)."""
    return np.nonzero((y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:]))[0] + 1


def _prominence(y: np.ndarray, k: int) -> float:
    """Topographic prominence of the maximum y[k] (scipy.signal.peak_prominences' definition)."""
    higher = np.nonzero(y[:k] > y[k])[0]
    left = y[(higher[-1] if len(higher) else 0):k + 1].min()
    higher = np.nonzero(y[k + 1:] > y[k])[0]
    right = y[k:(k + 1 + higher[0] if len(higher) else len(y))].min()
    return float(y[k] - max(left, right))


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

    counts = np.zeros(n_bins, dtype=np.int64)
    inv_vol = 0.0
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
        counts += np.bincount(k[k < n_bins], minlength=n_bins)
        inv_vol += 1.0 / abs(np.linalg.det(box[f]))
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = counts / (n_pairs * shell * inv_vol)
    return 0.5 * (edges[1:] + edges[:-1]), g


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
    minima = [m for m in _local_maxima(-gs) if m > kp and _prominence(-gs, m) >= prominence]
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
    counts = np.zeros(n_bins, dtype=np.int64)
    centres = None
    if centre is not None:
        if types is None:
            raise ValueError("centre needs types (the bead type of each bead)")
        centres = np.asarray(types) == int(centre)
    for f in range(pos.shape[0]):
        ang = _angles_one_frame(pos[f], box[f], nl, centres)
        k = np.minimum(np.floor(ang / width).astype(np.int64), n_bins - 1)   # 180 deg -> last bin
        counts += np.bincount(k, minlength=n_bins)
    theta = (np.arange(n_bins) + 0.5) * width
    total = counts.sum()
    p = counts / (total * width) if total > 0 else np.zeros(n_bins)
    return theta, p


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
    diff = g_cg - g_ref
    support = np.maximum(g_ref, g_cg) > 0
    if not support.any():
        raise ValueError("both RDFs are zero everywhere")
    pr, hr = first_peak(r, g_ref, smooth)
    pc, hc = first_peak(r, g_cg, smooth)
    return {
        "mad": float(np.mean(np.abs(diff[support]))),
        "max_abs_dev": float(np.max(np.abs(diff))),
        "rmsd": float(np.sqrt(np.mean(diff[support] ** 2))),
        "peak_r_ref": pr, "peak_r_cg": pc, "peak_g_ref": hr, "peak_g_cg": hc,
        "peak_position_error": pc - pr,
        "peak_height_error": hc - hr,
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


_PLOTS = ("plot_rdfs", "plot_adfs", "plot_density_vs_temperature")


def __getattr__(name: str) -> Any:
    """The plots moved to :mod:`openmm_cgnn.reporting`; ``analysis.plot_rdfs`` etc. still work."""
    if name in _PLOTS:
        from . import reporting

        return getattr(reporting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
