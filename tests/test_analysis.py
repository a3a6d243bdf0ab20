"""Tests of openmm_cgnn.analysis: RDF, ADF, density, error bars, metrics and plots.

Each test builds its own small configuration with a fixed seed, so statistical tolerances are
checked against one deterministic sample; the tolerances are stated where they are chosen.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from openmm_cgnn import analysis as A
from openmm_cgnn.testing import ar1_series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cubic(L: float) -> np.ndarray:
    return np.eye(3) * L


def rhombic_dodecahedron(d: float) -> np.ndarray:
    """OpenMM's reduced rhombic dodecahedron (xy-square) with box-vector length d, rows."""
    return np.array([[d, 0, 0], [0, d, 0], [d / 2, d / 2, d / math.sqrt(2)]])


def fcc(a: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    return ((cells + basis).reshape(-1, 3) * a), cubic(n * a)


def ideal_counts(n_pairs: int, r: np.ndarray, volume: float, n_frames: int) -> np.ndarray:
    """Expected pair counts per bin for uniform random points (the RDF's normalisation)."""
    dr = r[1] - r[0]
    shell = 4 / 3 * np.pi * ((r + dr / 2) ** 3 - (r - dr / 2) ** 3)
    return n_pairs * shell / volume * n_frames


# ---------------------------------------------------------------------------------------------
# minimum-image radius
# ---------------------------------------------------------------------------------------------
def test_minimum_image_radius_of_common_boxes():
    assert A.minimum_image_radius(cubic(3.0)) == pytest.approx(1.5)
    assert A.minimum_image_radius(np.diag([3.0, 2.0, 4.0])) == pytest.approx(1.0)
    # rhombic dodecahedron: all lattice vectors have length >= d, although the face-to-face
    # width along z is only d / sqrt(2)
    assert A.minimum_image_radius(rhombic_dodecahedron(4.0)) == pytest.approx(2.0)
    # a non-reduced basis of the cubic lattice has the same radius
    L = 3.0
    skew = np.array([[L, 0, 0], [L, L, 0], [L, L, L]])
    assert A.minimum_image_radius(skew) == pytest.approx(1.5)
    # over frames the smallest box wins
    assert A.minimum_image_radius(np.stack([cubic(3.0), cubic(2.5)])) == pytest.approx(1.25)


# ---------------------------------------------------------------------------------------------
# RDF
# ---------------------------------------------------------------------------------------------
def test_rdf_of_uniform_random_points_is_one():
    rng = np.random.default_rng(0)
    L, n, f = 2.5, 500, 10
    pos = rng.uniform(0, L, (f, n, 3))
    r, g = A.rdf(pos, cubic(L), bin_width=0.05)
    assert r[-1] == pytest.approx(L / 2 - 0.025)          # default r_max = L / 2
    expected = ideal_counts(n * (n - 1) // 2, r, L ** 3, f)
    # Pair counts in a bin are binomial (pairs of uniform points in a periodic box are pairwise
    # independent), so the relative noise of g is 1/sqrt(expected count): from 0.15 in the first
    # bin (~40 pairs) to 0.004 in the last (~7e4). 5 sigma per bin keeps a false alarm over 25
    # bins below 1e-5, while a normalisation error of 5 % fails every bin beyond 0.5 nm.
    tol = 5 / np.sqrt(expected)
    assert np.all(np.abs(g - 1) < tol), np.max(np.abs(g - 1) / tol)
    pooled = np.sum(g * expected) / np.sum(expected)
    assert abs(pooled - 1) < 5 / math.sqrt(np.sum(expected))

    # frames of different volume (NPT): the ideal count is summed frame by frame
    boxes = np.stack([cubic(2.0), cubic(3.0)] * 3)
    pos = rng.uniform(0, 1, (6, n, 3)) * np.array([2.0, 3.0] * 3)[:, None, None]
    r, g = A.rdf(pos, boxes, bin_width=0.05)
    expected = ideal_counts(n * (n - 1) // 2, r, 1.0, 1) * 3 * (1 / 8 + 1 / 27)
    assert np.all(np.abs(g - 1) < 5 / np.sqrt(expected))


def test_rdf_matches_mdtraj_in_a_triclinic_box():
    md = pytest.importorskip("mdtraj")
    rng = np.random.default_rng(1)
    d, n, f = 2.2, 300, 3
    box = rhombic_dodecahedron(d)
    frac = rng.uniform(0, 1, (f, n, 3))
    pos = frac @ box
    r, g = A.rdf(pos, box, bin_width=0.05)
    assert r[-1] + 0.025 == pytest.approx(d / 2)             # beyond half the z width d/(2 sqrt 2)

    top = md.Topology()
    chain = top.add_chain()
    for _ in range(n):
        top.add_atom("B", md.element.carbon, top.add_residue("B", chain))
    traj = md.Trajectory(pos, top)
    traj.unitcell_vectors = np.broadcast_to(box, (f, 3, 3)).copy()
    r_md, g_md = md.compute_rdf(traj, np.array(np.triu_indices(n, 1)).T,
                                r_range=(0.0, r[-1] + 0.025), n_bins=len(r))
    np.testing.assert_allclose(r, r_md, atol=1e-6)
    # mdtraj works in float32: a handful of distances can land in the neighbouring bin
    expected = ideal_counts(n * (n - 1) // 2, r, abs(np.linalg.det(box)), f)
    assert np.all(np.abs(g - g_md) * expected <= 3)
    # and it is still an ideal gas out to d / 2 (5 sigma, as in the test above)
    assert np.all(np.abs(g - 1) < 5 / np.sqrt(expected))


def test_rdf_is_the_same_in_an_equivalent_triclinic_basis_and_for_unwrapped_positions():
    rng = np.random.default_rng(2)
    L, n = 2.0, 200
    pos = rng.uniform(0, L, (2, n, 3))
    skew = np.array([[L, 0, 0], [L, L, 0], [L, L, L]])       # same lattice as cubic(L)
    unwrapped = pos + rng.integers(-3, 4, (2, n, 1)) * np.array([L, 0, 0]) \
        + rng.integers(-3, 4, (2, n, 1)) * np.array([0, 0, L])
    r0, g0 = A.rdf(pos, cubic(L), bin_width=0.02)
    r1, g1 = A.rdf(pos, skew, bin_width=0.02)
    r2, g2 = A.rdf(unwrapped, cubic(L), bin_width=0.02)
    # a rotated frame (box no longer lower-triangular): rotate positions and box vectors alike
    c, s = math.cos(0.7), math.sin(0.7)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    r3, g3 = A.rdf(pos @ rot.T, skew @ rot.T, bin_width=0.02)
    np.testing.assert_allclose(r1, r0)
    np.testing.assert_allclose(g1, g0, rtol=1e-12)
    np.testing.assert_allclose(g2, g0, rtol=1e-12)
    np.testing.assert_allclose(r3, r0)
    np.testing.assert_allclose(g3, g0, rtol=1e-9)
    assert g0.sum() > 0


def test_rdf_type_pairs_add_up_to_the_total():
    rng = np.random.default_rng(3)
    L, n = 2.0, 240
    pos = rng.uniform(0, L, (2, n, 3))
    types = np.repeat([0, 1, 2], [60, 80, 100])
    _, g_all = A.rdf(pos, cubic(L), bin_width=0.05)
    counts = {(0, 0): 60 * 59 // 2, (1, 1): 80 * 79 // 2, (2, 2): 100 * 99 // 2,
              (0, 1): 60 * 80, (0, 2): 60 * 100, (1, 2): 80 * 100}
    total = sum(n_ab * A.rdf(pos, cubic(L), bin_width=0.05, types=types, pair=ab)[1]
                for ab, n_ab in counts.items())
    # pair counts are additive, and each g is counts / (n_pairs * ideal), so this is exact
    np.testing.assert_allclose(total, n * (n - 1) // 2 * g_all, rtol=1e-12)
    np.testing.assert_allclose(A.rdf(pos, cubic(L), bin_width=0.05, types=types, pair=(1, 0))[1],
                               A.rdf(pos, cubic(L), bin_width=0.05, types=types, pair=(0, 1))[1])


def test_rdf_rejects_bad_ranges_and_arguments():
    pos = np.random.default_rng(4).uniform(0, 2, (1, 20, 3))
    with pytest.raises(ValueError, match="minimum-image radius"):
        A.rdf(pos, cubic(2.0), r_max=1.2)
    with pytest.raises(ValueError, match="types"):
        A.rdf(pos, cubic(2.0), pair=(0, 0))
    with pytest.raises(ValueError, match="boxes"):
        A.rdf(pos, np.eye(3)[:2])


def test_fcc_first_peak_and_coordination_number():
    a, cells = 0.5, 4
    pos, box = fcc(a, cells)
    n, vol = len(pos), np.linalg.det(box)
    r, g = A.rdf(pos, box, bin_width=0.005)
    r_peak, _ = A.first_peak(r, g)
    assert abs(r_peak - a / math.sqrt(2)) <= 0.0025          # within half a bin
    r_min = A.first_minimum(r, g)
    assert a / math.sqrt(2) < r_min < a                       # between the 1st and 2nd shells
    assert A.coordination_number(r, g, (n - 1) / vol, r_min) == pytest.approx(12.0, abs=1e-9)
    assert A.coordination_number(r, g, (n - 1) / vol, 0.55) == pytest.approx(18.0, abs=1e-9)

    # thermal disorder (0.012 nm per coordinate) keeps both, within the stated tolerances
    rng = np.random.default_rng(5)
    hot = pos + rng.normal(0, 0.012, (4,) + pos.shape)
    r, g = A.rdf(hot, box, bin_width=0.005)
    assert abs(A.first_peak(r, g)[0] - a / math.sqrt(2)) < 0.005
    r_min = A.first_minimum(r, g)
    assert A.coordination_number(r, g, (n - 1) / vol, r_min) == pytest.approx(12.0, abs=0.05)


def _model_rdf(r: np.ndarray) -> np.ndarray:
    core = 1 / (1 + np.exp(-(r - 0.31) / 0.01))
    return core * (1 + 1.6 * np.exp(-(r - 0.36) ** 2 / (2 * 0.03 ** 2))
                   - 0.5 * np.exp(-(r - 0.47) ** 2 / (2 * 0.04 ** 2))
                   + 0.25 * np.exp(-(r - 0.62) ** 2 / (2 * 0.05 ** 2)))


def test_first_minimum_is_robust_to_noise():
    fine = np.linspace(0.36, 0.6, 24001)
    true_min = fine[np.argmin(_model_rdf(fine))]
    r = np.arange(0.0025, 1.2, 0.005)
    rng = np.random.default_rng(6)
    for _ in range(5):
        g = _model_rdf(r) + rng.normal(0, 0.05, r.shape)      # noise of a short run
        assert abs(A.first_minimum(r, g) - true_min) < 0.015
    assert abs(A.first_minimum(r, _model_rdf(r)) - true_min) < 0.003
    with pytest.raises(ValueError, match="no minimum"):
        A.first_minimum(r[r < 0.4], _model_rdf(r[r < 0.4]))


def test_first_minimum_skips_dips_shallower_than_the_prominence():
    r = np.arange(0.0025, 1.2, 0.005)
    # peak 2.5 at 0.36, a 0.02-deep notch at 0.41 on the falling flank, the real minimum at 0.47
    g = np.interp(r, [0, 0.3, 0.36, 0.40, 0.41, 0.42, 0.47, 0.6, 0.8],
                  [0, 0, 2.5, 1.0, 0.98, 1.0, 0.5, 1.2, 1.0])
    assert A.first_minimum(r, g, smooth=0) == pytest.approx(0.47, abs=0.003)
    assert A.first_minimum(r, g, smooth=0, prominence=0.01) == pytest.approx(0.41, abs=0.003)


# ---------------------------------------------------------------------------------------------
# ADF
# ---------------------------------------------------------------------------------------------
def _centre_with_neighbours(directions: np.ndarray, bond: float, L: float) -> np.ndarray:
    """A bead at the box corner (so its neighbours wrap around) with neighbours at ``bond``."""
    u = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    return np.mod(np.vstack([[0.0, 0.0, 0.0], bond * u]), L)


def test_adf_of_a_tetrahedron_is_six_angles_at_109_47():
    L = 3.0
    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    pos = _centre_with_neighbours(tet, 0.3, L)                # neighbours 0.49 nm apart
    theta, p = A.adf(pos, cubic(L), shell_cutoff=0.35, n_bins=45)   # 4-degree bins
    width = 4.0
    assert np.sum(p) * width == pytest.approx(1.0)
    k = int(math.degrees(math.acos(-1 / 3)) // width)        # 109.47 deg -> bin [108, 112)
    assert p[k] * width == pytest.approx(1.0)                 # all 6 angles there
    assert theta[k] == pytest.approx(110.0)


def test_adf_of_a_square_planar_bead_is_four_right_angles_and_two_straight():
    L = 2.0
    sq = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]], dtype=float)
    pos = _centre_with_neighbours(sq, 0.3, L)                 # neighbours 0.42 nm apart
    theta, p = A.adf(pos, cubic(L), shell_cutoff=0.35, n_bins=45)
    width = 4.0
    mass = p * width
    assert mass[int(90 // width)] == pytest.approx(4 / 6)
    assert mass[-1] == pytest.approx(2 / 6)                   # 180 deg falls in the last bin
    assert mass.sum() == pytest.approx(1.0)
    # a larger shell: each outer bead now sees the centre (0.3 nm) and the two outer beads next
    # to it (0.42 nm), which adds 3 angles per outer bead (45, 45 and 90 degrees):
    # 18 angles, 8 at 45, 4 + 4 at 90, 2 at 180
    theta, p = A.adf(pos, cubic(L), shell_cutoff=0.45, n_bins=45)
    mass = p * width
    assert mass[int(45 // width)] == pytest.approx(8 / 18)
    assert mass[int(90 // width)] == pytest.approx((4 + 4) / 18)
    assert mass[-1] == pytest.approx(2 / 18)


def test_adf_of_uncorrelated_points_follows_sin_theta():
    rng = np.random.default_rng(7)
    L, n = 2.5, 600
    pos = rng.uniform(0, L, (2, n, 3))
    theta, p = A.adf(pos, cubic(L), shell_cutoff=0.45, n_bins=18)
    width = 10.0
    expected = np.pi / 360 * np.sin(np.radians(theta))
    assert np.sum(p) * width == pytest.approx(1.0)
    # Counting noise: ~1.3e5 angles in all; the angles around one bead share legs, but for
    # independent uniform directions they are pairwise independent, so sqrt(count) applies.
    n_angles = 2 * n * (4 / 3 * np.pi * 0.45 ** 3 * n / L ** 3) ** 2 / 2
    sigma = np.sqrt(expected * width * n_angles) / (n_angles * width)
    assert np.all(np.abs(p - expected) < 6 * sigma)


def test_adf_rejects_a_shell_beyond_the_minimum_image_radius():
    with pytest.raises(ValueError, match="shell_cutoff"):
        A.adf(np.zeros((1, 2, 3)), cubic(1.0), shell_cutoff=0.6)


# ---------------------------------------------------------------------------------------------
# density and error bars
# ---------------------------------------------------------------------------------------------
def test_density_of_known_boxes():
    # 602.214076 amu = 1e-21 g; a 1 nm^3 box is 1e-21 cm^3 -> 1 g/cm^3
    np.testing.assert_allclose(A.density(np.eye(3)[None], 602.214076), [1.0])
    # 1000 methanol molecules (32.042 amu) in a (3.5 nm)^3 box:
    # 5.320706e-20 g / 4.2875e-20 cm^3 = 1.240979 g/cm^3
    boxes = np.stack([cubic(3.5), rhombic_dodecahedron(2.0)])
    rho = A.density(boxes, 1000 * 32.042)
    assert rho.shape == (2,)
    assert rho[0] == pytest.approx(1.240979, rel=1e-6)
    assert rho[1] == pytest.approx(1000 * 32.042 / 6.02214076e23 / (8 / math.sqrt(2) * 1e-21))


def test_block_average_is_honest_for_correlated_data():
    rng = np.random.default_rng(8)
    phi, n = 0.9, 20000
    x = ar1_series(phi, n, rng)
    mean, se = A.block_average(x, n_blocks=20)
    naive = x.std(ddof=1) / math.sqrt(n)
    g_true = (1 + phi) / (1 - phi)                            # 19 for an AR(1) series
    assert mean == pytest.approx(x.mean(), abs=1e-12)
    assert se > 2.5 * naive                                   # sqrt(19) = 4.4 expected
    # 20 blocks: the error estimate itself is uncertain by ~16 %, so allow a factor 1.6
    assert 1 / 1.6 < se / (naive * math.sqrt(g_true)) < 1.6
    assert A.statistical_inefficiency(x) == pytest.approx(g_true, rel=0.25)


def test_block_average_agrees_with_naive_for_uncorrelated_data():
    rng = np.random.default_rng(9)
    x = rng.normal(2.0, 3.0, 5000)
    mean, se = A.block_average(x)
    naive = x.std(ddof=1) / math.sqrt(len(x))
    assert 0.5 < se / naive < 2.0                             # 10 blocks: +-24 % (1 sigma)
    assert A.statistical_inefficiency(x) < 1.3
    assert A.statistical_inefficiency(np.ones(10)) == 1.0


def test_block_average_of_curves_and_leftover_samples():
    x = np.arange(23.0)[:, None] * np.array([1.0, 2.0])      # 23 samples, 2 columns
    mean, se = A.block_average(x, n_blocks=5)                 # 3 leftovers dropped from the start
    np.testing.assert_allclose(mean, [np.mean(np.arange(3, 23)), 2 * np.mean(np.arange(3, 23))])
    block_means = np.arange(3, 23).reshape(5, 4).mean(axis=1)
    np.testing.assert_allclose(se, np.array([1, 2]) * block_means.std(ddof=1) / math.sqrt(5))
    with pytest.raises(ValueError):
        A.block_average(np.ones(3), n_blocks=5)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def test_rdf_metrics_of_identical_curves_is_zero():
    r = np.arange(0.0025, 1.2, 0.005)
    g = _model_rdf(r)
    m = A.rdf_metrics(r, g, g)
    for key in ("mad", "max_abs_dev", "rmsd", "peak_position_error", "peak_height_error"):
        assert m[key] == 0.0, key
    assert m["peak_r_ref"] == pytest.approx(0.36, abs=0.003)
    fine = np.linspace(0.3, 0.45, 15001)
    assert m["peak_g_ref"] == pytest.approx(_model_rdf(fine).max(), abs=0.005)


def test_rdf_metrics_of_a_shifted_peak_gives_the_shift():
    r = np.arange(0.0025, 1.2, 0.005)
    shift = 0.013                                            # 2.6 bins: needs sub-bin refinement
    m = A.rdf_metrics(r, _model_rdf(r), _model_rdf(r - shift))
    assert m["peak_position_error"] == pytest.approx(shift, abs=0.001)
    assert m["peak_height_error"] == pytest.approx(0.0, abs=0.01)
    assert m["mad"] > 0.05

    # a constant offset on the support: MAD = max = 0.1, the empty core does not dilute it
    g = np.where(r > 0.3, 1.0 + np.exp(-(r - 0.4) ** 2 / 0.002), 0.0)
    m = A.rdf_metrics(r, g, np.where(r > 0.3, g + 0.1, 0.0))
    assert m["mad"] == pytest.approx(0.1)
    assert m["max_abs_dev"] == pytest.approx(0.1)
    assert m["peak_height_error"] == pytest.approx(0.1, abs=1e-3)


def test_adf_l1_limits():
    theta = np.arange(1.0, 180.0, 2.0)
    p = np.sin(np.radians(theta))
    assert A.adf_l1(p, p, theta) == 0.0
    assert A.adf_l1(p, 3 * p, theta) == pytest.approx(0.0, abs=1e-12)     # renormalised
    left, right = (theta < 90).astype(float), (theta > 90).astype(float)
    assert A.adf_l1(left, right, theta) == pytest.approx(2.0)
    half = 0.5 * left / left.sum() + 0.5 * right / right.sum()
    assert A.adf_l1(left, half, theta) == pytest.approx(1.0)


def test_density_error_propagates_the_uncertainty():
    e = A.density_error(0.80, 0.01, 0.78, 0.005)
    assert e["abs_error"] == pytest.approx(0.02)
    assert e["abs_error_se"] == pytest.approx(0.0111803, rel=1e-5)
    assert e["relative_error"] == pytest.approx(0.0256410, rel=1e-5)
    assert e["relative_error_se"] == pytest.approx(0.0144078, rel=1e-4)
    assert e["z"] == pytest.approx(1.78885, rel=1e-5)
    same = A.density_error(0.8, 0.0, 0.8, 0.0)
    assert same["relative_error"] == 0.0 and same["z"] == 0.0


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _assert_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.01                          # not a blank canvas


def test_plots_write_valid_pngs(tmp_path):
    r = np.arange(0.0025, 1.2, 0.005)
    theta = np.arange(1.0, 180.0, 2.0)
    p_ref = np.sin(np.radians(theta)) * (1 + 0.5 * np.exp(-(theta - 60) ** 2 / 200))
    p_ref /= p_ref.sum() * 2
    curves = {"300 K": (r, _model_rdf(r), _model_rdf(r - 0.01)),
              "400 K": (r, _model_rdf(r), None),
              "500 K": (r, _model_rdf(r) * 0.9, _model_rdf(r))}
    out = A.plot_rdfs(curves, tmp_path / "sub" / "rdf.png", title="bead-bead RDF")
    assert out == tmp_path / "sub" / "rdf.png"
    _assert_png(out)
    _assert_png(A.plot_adfs({"300 K": (theta, p_ref, np.sin(np.radians(theta)) / 114.6)},
                            tmp_path / "adf.png"))
    rows = [{"temperature_K": 300, "ref_mean": 0.78, "ref_se": 0.002, "cg_mean": 0.76, "cg_se": 0.004,
             "training": True},
            {"temperature_K": 250, "ref_mean": 0.83, "ref_se": 0.002, "cg_mean": None},
            {"temperature_K": 350, "ref_mean": 0.73, "ref_se": 0.003, "cg_mean": 0.70, "cg_se": 0.005}]
    _assert_png(A.plot_density_vs_temperature(rows, tmp_path / "density.png"))
    assert not list(tmp_path.glob("**/.*.tmp"))               # atomic writes leave no temp files


def test_first_peak_of_a_split_shell_is_the_inner_peak_even_when_lower():
    from openmm_cgnn.analysis import first_peak

    r = np.arange(0.0, 1.0, 0.005)
    g = np.where(r > 0.28, 1.0, 0.0) + 1.6 * np.exp(-((r - 0.34) / 0.02) ** 2) \
        + 1.9 * np.exp(-((r - 0.45) / 0.03) ** 2)
    r_peak, g_peak = first_peak(r, g)
    assert abs(r_peak - 0.34) < 0.005 and g_peak == pytest.approx(2.6, abs=0.1)


def test_series_mean_se_uses_at_most_half_as_many_blocks_as_samples():
    # 4 samples: 2 blocks of means 1.5 and 3.5 -> mean 2.5, se = std([1.5, 3.5], ddof=1) / sqrt(2) = 1
    assert A.series_mean_se(np.array([1.0, 2.0, 3.0, 4.0]), 10) == (2.5, pytest.approx(1.0), 2)
    assert A.series_mean_se(np.array([1.0, 2.0, 6.0]), 5) == (3.0, None, None)
    mean, se, blocks = A.series_mean_se(np.arange(100.0), 5)
    assert blocks == 5 and mean == pytest.approx(49.5) and se == pytest.approx(np.std(
        np.arange(100.0).reshape(5, 20).mean(axis=1), ddof=1) / math.sqrt(5))


def test_block_drift_flags_a_steady_ramp_and_not_a_stationary_series():
    ramp = np.linspace(0.70, 0.80, 100)                 # g/cm^3, still rising
    first, last = A.block_drift(ramp, 5)
    assert first == pytest.approx(ramp[:20].mean()) and last == pytest.approx(ramp[80:].mean())
    flat = 0.787 + 0.001 * np.tile([1.0, -1.0, 0.5, -0.5, 0.0], 20)   # block means all equal
    assert A.block_drift(flat, 5) is None
    assert A.block_drift(ramp * 0 + 0.787 + np.linspace(0, 1e-4, 100), 5) is None   # below the 1 % tolerance
    assert A.block_drift(ramp[:4], 5) is None                                      # fewer than 3 blocks
