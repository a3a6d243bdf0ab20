"""Block-bootstrap standard errors and noise floors (openmm_cgnn.analysis), against known answers.

The synthetic "RDFs" here are per-frame Poisson pair counts drawn around a known g(r), so the noise
of every curve, and with it the expected distance between two samples of one distribution, follows
from the Poisson variance. Each test uses one fixed seed; tolerances are set from the stated
statistical uncertainty of the quantity checked (about 3 sigma), not from the result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from openmm_cgnn import analysis as A
from openmm_cgnn.testing import ar1_series

R = np.arange(0.005, 1.0, 0.01)                    # 100 bins of 0.01 nm
SHELL = 4.0 / 3.0 * np.pi * ((R + 0.005) ** 3 - (R - 0.005) ** 3)
LAM = 1600.0                                        # pairs per nm^3 of shell per frame: ~50 per bin near 0.5 nm


def model_g(shift: float = 0.0) -> np.ndarray:
    """A liquid-like g(r): hard core below 0.3 nm, first peak at 0.45 nm, a dip, then 1."""
    g = 1 + 1.5 * np.exp(-((R - 0.45 - shift) / 0.04) ** 2) - 0.4 * np.exp(-((R - 0.6 - shift) / 0.06) ** 2)
    return np.where(R < 0.3 + shift, 0.0, g)


def poisson_rdf(n: int, rng: np.random.Generator, shift: float = 0.0, phi: float = 0.0,
                amplitude: float = 0.0) -> A.FrameSums:
    """n frames of Poisson pair counts around model_g(shift); with amplitude > 0 the expected counts of
    each frame are scaled by 1 + amplitude x (an AR(1) series of coefficient phi, unit variance)."""
    g = model_g(shift)
    scale = np.ones(n)
    if amplitude:
        scale = 1 + amplitude * ar1_series(phi, n, rng) * math.sqrt(1 - phi ** 2)
    counts = rng.poisson(LAM * SHELL * g * scale[:, None])
    return A.FrameSums(x=R, num=counts, den=np.ones(n), norm=LAM * SHELL)


def expected_noise_mad(n_a: int, n_b: int, g: np.ndarray | None = None) -> float:
    """E[mean_k |g_a - g_b|] over the non-zero bins for two independent i.i.d. Poisson samples of n_a and
    n_b frames of one g: each bin difference is ~ N(0, g / (LAM V_k) (1/n_a + 1/n_b)), and E|N(0, s)| =
    s sqrt(2 / pi)."""
    g = model_g() if g is None else g
    sd = np.sqrt(g / (LAM * SHELL) * (1 / n_a + 1 / n_b))
    return float(np.mean(np.sqrt(2 / np.pi) * sd[g > 0]))


def plan_for(sums: A.FrameSums) -> A.BlockPlan:
    return A.plan_blocks(A.block_observables(sums))


def mean_difference(ref, cg):
    return {"diff": float(cg[0][0] - ref[0][0])}


# ---------------------------------------------------------------------------------------------
# block length from the autocorrelation time
# ---------------------------------------------------------------------------------------------
def test_block_plan_follows_the_integrated_autocorrelation_time():
    rng = np.random.default_rng(1)
    phi = 0.8                                               # g = 9 frames
    plan = A.plan_blocks(ar1_series(phi, 20000, rng))
    # the estimator scatters by ~10 % at this length (30 seeds: 0.90 to 1.26 x the truth)
    assert plan.statistical_inefficiency == pytest.approx(9.0, rel=0.3)
    assert plan.length == math.ceil(3 * plan.statistical_inefficiency)
    assert plan.independent and plan.n_blocks == 20000 // plan.length
    assert plan.start == 20000 - plan.n_blocks * plan.length
    # uncorrelated frames: blocks of a few frames, as many as fit
    iid = A.plan_blocks(rng.normal(size=(5000, 3)))
    assert iid.statistical_inefficiency < 1.3 and iid.length <= 4 and iid.independent
    # the slowest of several series sets the length
    both = A.plan_blocks(np.stack([rng.normal(size=20000), ar1_series(phi, 20000, rng)], axis=1))
    assert both.statistical_inefficiency == pytest.approx(9.0, rel=0.3)


def test_too_few_frames_shorten_the_blocks_and_say_so():
    rng = np.random.default_rng(2)
    plan = A.plan_blocks(ar1_series(0.9, 120, rng), min_blocks=8)      # g ~ 19: 8 blocks of 3 g do not fit
    assert not plan.independent
    assert (plan.n_blocks, plan.length) == (8, 15)
    assert plan.to_dict()["independent"] is False
    with pytest.raises(ValueError, match="cannot make 8 blocks"):
        A.plan_blocks(np.arange(5.0), min_blocks=8)
    with pytest.raises(ValueError, match="two halves"):
        A.noise_floor(mean_difference, A.FrameSums.of_series(np.arange(6.0)), A.BlockPlan(6, 2, 3))


def test_block_observables_are_windows_of_the_per_frame_curve():
    rng = np.random.default_rng(3)
    sums = poisson_rdf(50, rng)
    obs = A.block_observables(sums, series=[np.arange(50.0)], n_windows=4)
    assert obs.shape == (50, 5)
    support = np.nonzero(model_g() > 0)[0]
    first = np.array_split(support, 4)[0]
    np.testing.assert_allclose(obs[:, 0], sums.per_frame()[:, first].sum(axis=1))
    np.testing.assert_array_equal(obs[:, 4], np.arange(50.0))


# ---------------------------------------------------------------------------------------------
# the bootstrap standard error against theory
# ---------------------------------------------------------------------------------------------
def test_bootstrap_se_of_a_mean_of_independent_frames_is_sigma_over_sqrt_n():
    rng = np.random.default_rng(4)
    sigma, n_ref, n_cg = 2.0, 2000, 1500
    ref = A.FrameSums.of_series(rng.normal(5.0, sigma, n_ref))
    cg = A.FrameSums.of_series(rng.normal(5.0, sigma, n_cg))
    out = A.bootstrap_metric(mean_difference, ref, cg, plan_for(ref), plan_for(cg), n_resamples=1000, seed=0)
    assert out["value"]["diff"] == pytest.approx(cg.num.mean() - ref.num.mean(), abs=1e-12)
    theory = sigma * math.sqrt(1 / n_ref + 1 / n_cg)
    # ~650 blocks per side (sigma known to ~3 %) and 1000 resamples (~2 %): 12 % is 3 sigma
    assert out["se"]["diff"] == pytest.approx(theory, rel=0.12)


def test_bootstrap_se_of_a_correlated_mean_includes_the_autocorrelation():
    rng = np.random.default_rng(5)
    phi, n = 0.9, 20000
    g_true = (1 + phi) / (1 - phi)                            # 19
    ref = A.FrameSums.of_series(ar1_series(phi, n, rng))
    cg = A.FrameSums.of_series(ar1_series(phi, n, rng))
    out = A.bootstrap_metric(mean_difference, ref, cg, plan_for(ref), plan_for(cg), n_resamples=1000, seed=0)
    theory = math.sqrt(2 * g_true / n / (1 - phi ** 2))       # sqrt(2) sigma_x sqrt(g / n)
    naive = math.sqrt(2 / n / (1 - phi ** 2))                 # frames treated as independent: 4.4x too small
    # blocks of 3 g leave the SE ~8 % low; ~350 blocks per side add ~4 % noise
    assert 0.8 < out["se"]["diff"] / theory < 1.1
    assert out["se"]["diff"] > 3 * naive


def test_bootstrap_se_of_the_rdf_mad_matches_the_spread_over_independent_repeats():
    rng = np.random.default_rng(6)
    n, shift = 200, 0.01                                      # a real difference: MAD ~0.07, noise ~0.01
    mads = [A.rdf_distances([poisson_rdf(n, rng).curve()], [poisson_rdf(n, rng, shift).curve()])["mad"]
            for _ in range(200)]
    truth = float(np.std(mads, ddof=1))
    ref, cg = poisson_rdf(n, rng), poisson_rdf(n, rng, shift)
    out = A.bootstrap_metric(A.rdf_distances, ref, cg, plan_for(ref), plan_for(cg), n_resamples=200, seed=1)
    # The bootstrap SE of a MAD is conservative: in bins where the curves agree within noise it adds
    # noise to noise (pure noise: ~1.4x the true spread; this case: ~1.05x on average over seeds).
    # Uncertainties: truth from 200 repeats ~5 %, one bootstrap of ~60 blocks per side ~10 %.
    assert 0.8 < out["se"]["mad"] / truth < 1.7
    # the first-peak errors get theirs too (a few resamples are enough to see that)
    peaks = A.bootstrap_metric(A.rdf_comparison(R), ref, cg, plan_for(ref), plan_for(cg), n_resamples=20)
    for key in ("max_abs_dev", "rmsd", "peak_position_error", "peak_height_error"):
        assert peaks["se"][key] is not None and peaks["se"][key] > 0


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    ref, cg = poisson_rdf(80, rng), poisson_rdf(80, rng)
    pr, pc = plan_for(ref), plan_for(cg)
    a = A.bootstrap_metric(A.rdf_distances, ref, cg, pr, pc, n_resamples=50, seed=3)
    b = A.bootstrap_metric(A.rdf_distances, ref, cg, pr, pc, n_resamples=50, seed=3)
    c = A.bootstrap_metric(A.rdf_distances, ref, cg, pr, pc, n_resamples=50, seed=4)
    assert a == b
    assert a["se"]["mad"] != c["se"]["mad"]


# ---------------------------------------------------------------------------------------------
# noise floor
# ---------------------------------------------------------------------------------------------
def test_identical_trajectories_give_zero_and_a_small_floor():
    rng = np.random.default_rng(8)
    ref = poisson_rdf(400, rng)
    plan = plan_for(ref)
    out = A.bootstrap_metric(A.rdf_distances, ref, ref, plan, plan, n_resamples=200)
    assert out["value"] == {"mad": 0.0, "max_abs_dev": 0.0, "rmsd": 0.0}
    floor = A.noise_floor(A.rdf_distances, ref, plan, cg_plan=plan)
    assert floor["method"] == "halves"
    # the floor is the noise of 400 vs 400 frames (~0.007; one sample of it scatters by ~10 %),
    # far below the structural errors of a CG model (~0.05)
    assert floor["value"]["mad"] == pytest.approx(expected_noise_mad(400, 400), rel=0.3)
    assert floor["value"]["mad"] < 0.01


def test_half_vs_half_floor_is_scaled_to_the_full_comparison():
    rng = np.random.default_rng(9)
    n, repeats = 600, 10
    raw, scaled, short_scaled = [], [], []
    for _ in range(repeats):
        ref = poisson_rdf(n, rng)
        plan = plan_for(ref)
        floor = A.noise_floor(A.rdf_distances, ref, plan, n_resamples=20)   # no CG plan: CG as long as the reference
        h = plan.n_blocks // 2 * plan.length
        assert floor["scale"] == pytest.approx(math.sqrt(h / n))
        assert floor["value"]["mad"] == pytest.approx(floor["raw"]["mad"] * floor["scale"])
        assert floor["se"]["mad"] == pytest.approx(floor["raw_se"]["mad"] * floor["scale"])
        raw.append(floor["raw"]["mad"] / expected_noise_mad(h, h))
        scaled.append(floor["value"]["mad"] / expected_noise_mad(n, n))
        # a CG run 4x shorter than the reference: the comparison is noisier, and so is its floor
        short = A.BlockPlan(n // 4, plan.length, (n // 4) // plan.length, plan.statistical_inefficiency)
        floor = A.noise_floor(A.rdf_distances, ref, plan, cg_plan=short, n_resamples=20)
        short_scaled.append(floor["value"]["mad"] / expected_noise_mad(n, n // 4))
    # each ratio scatters by ~10 %, the mean of 10 by ~3 %; a missing sqrt(2) would be 41 % off
    assert np.mean(raw) == pytest.approx(1.0, abs=0.1)
    assert np.mean(scaled) == pytest.approx(1.0, abs=0.1)
    assert np.mean(short_scaled) == pytest.approx(1.0, abs=0.1)


def test_floor_from_an_independent_reference_run():
    rng = np.random.default_rng(10)
    plan = A.BlockPlan(300, 3, 100, 1.0)
    ratios = []
    for _ in range(10):
        ref, other = poisson_rdf(300, rng), poisson_rdf(300, rng)
        floor = A.noise_floor(A.rdf_distances, ref, plan, other=other, other_plan=plan, n_resamples=20)
        assert floor["method"] == "independent runs" and floor["scale"] == pytest.approx(1.0)
        assert floor["value"]["mad"] == pytest.approx(A.rdf_distances([ref.curve()], [other.curve()])["mad"])
        ratios.append(floor["value"]["mad"] / expected_noise_mad(300, 300))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1)          # mean of 10: ~3 %
    with pytest.raises(ValueError, match="other_plan"):
        A.noise_floor(A.rdf_distances, ref, plan, other=other)


def test_same_distribution_is_within_its_floor_and_a_shift_is_detected():
    rng = np.random.default_rng(11)
    n = 400
    # correlated frames (the first-peak amplitude follows an AR(1) series), as in a real trajectory
    ref = poisson_rdf(n, rng, phi=0.8, amplitude=0.05)
    same = poisson_rdf(n, rng, phi=0.8, amplitude=0.05)
    shifted = poisson_rdf(n, rng, shift=0.005, phi=0.8, amplitude=0.05)
    p_ref, p_same, p_shift = plan_for(ref), plan_for(same), plan_for(shifted)
    assert p_ref.statistical_inefficiency > 3                  # the correlation is seen
    floor = A.noise_floor(A.rdf_distances, ref, p_ref, cg_plan=p_same)
    m_same = A.bootstrap_metric(A.rdf_distances, ref, same, p_ref, p_same)
    combined = math.hypot(m_same["se"]["mad"], floor["se"]["mad"])
    assert abs(m_same["value"]["mad"] - floor["value"]["mad"]) < 3 * combined
    assert A.significant_difference(m_same["value"]["mad"], m_same["se"]["mad"],
                                    floor["value"]["mad"], floor["se"]["mad"]) == 0
    m_shift = A.bootstrap_metric(A.rdf_distances, ref, shifted, p_ref, p_shift)
    assert A.significant_difference(m_shift["value"]["mad"], m_shift["se"]["mad"],
                                    floor["value"]["mad"], floor["se"]["mad"]) == 1
    assert A.significant_difference(m_same["value"]["mad"], m_same["se"]["mad"],
                                    m_shift["value"]["mad"], m_shift["se"]["mad"]) == -1


def test_significant_difference_needs_two_combined_sigma():
    assert A.significant_difference(1.0, 0.3, 0.0, 0.4) == 0         # 1.0 < 2 x 0.5
    assert A.significant_difference(1.01, 0.3, 0.0, 0.4) == 1
    assert A.significant_difference(0.0, 0.3, 1.01, 0.4) == -1
    assert A.significant_difference(1.0, 0.3, 0.0, 0.4, n_sigma=1.0) == 1
    assert A.significant_difference(1.0, None, 0.0, 0.1) is None
    assert A.significant_difference(1.0, float("nan"), 0.0, 0.1) is None


# ---------------------------------------------------------------------------------------------
# the per-frame curves of real positions, the ADF and the density
# ---------------------------------------------------------------------------------------------
def test_frame_sums_of_positions_give_the_rdf_and_adf_of_any_subset():
    rng = np.random.default_rng(12)
    L = 2.0
    pos = rng.uniform(0, L, (12, 60, 3))
    box = np.eye(3) * L
    sums = A.rdf_frames(pos, box, bin_width=0.05)
    r, g = A.rdf(pos, box, bin_width=0.05)
    np.testing.assert_allclose(sums.curve(), g, rtol=1e-12)
    np.testing.assert_allclose(sums.frames(3, 9).curve(), A.rdf(pos[3:9], box, bin_width=0.05)[1], rtol=1e-12)
    w = np.zeros(12)
    w[[2, 5]] = [2, 1]                                           # frame 2 twice, frame 5 once
    np.testing.assert_allclose(sums.curve(w), A.rdf(pos[[2, 2, 5]], box, bin_width=0.05)[1], rtol=1e-12)
    adf_sums = A.adf_frames(pos, box, 0.4, n_bins=18)
    np.testing.assert_allclose(adf_sums.curve(), A.adf(pos, box, 0.4, n_bins=18)[1], rtol=1e-12)
    blocks = A.BlockPlan(12, 5, 2)                               # frames 2..11 in two blocks
    np.testing.assert_allclose(adf_sums.blocked(blocks).curve(), A.adf(pos[2:], box, 0.4, n_bins=18)[1],
                               rtol=1e-12)


def test_ideal_gas_rdf_and_adf_distances_sit_at_their_floor():
    rng = np.random.default_rng(13)
    L, n_frames = 2.0, 64
    box = np.eye(3) * L
    ref_pos, cg_pos = rng.uniform(0, L, (2, n_frames, 80, 3))
    ref, cg = A.rdf_frames(ref_pos, box, bin_width=0.05), A.rdf_frames(cg_pos, box, bin_width=0.05)
    ref_a, cg_a = A.adf_frames(ref_pos, box, 0.5, n_bins=18), A.adf_frames(cg_pos, box, 0.5, n_bins=18)
    p_ref = A.plan_blocks(A.block_observables(ref, ref_a))
    p_cg = A.plan_blocks(A.block_observables(cg, cg_a))
    for metric, a, b in ((A.rdf_distances, ref, cg), (A.adf_comparison(ref_a.x), ref_a, cg_a)):
        m = A.bootstrap_metric(metric, a, b, p_ref, p_cg, n_resamples=200)
        f = A.noise_floor(metric, a, p_ref, cg_plan=p_cg, n_resamples=200)
        key = next(iter(m["value"]))
        assert A.significant_difference(m["value"][key], m["se"][key], f["value"][key], f["se"][key], 3.0) == 0


def test_density_error_se_matches_theory():
    rng = np.random.default_rng(14)
    sigma, n = 0.01, 3000
    ref = A.FrameSums.of_series(rng.normal(0.79, sigma, n))
    cg = A.FrameSums.of_series(rng.normal(0.80, sigma, n))
    out = A.bootstrap_metric(A.density_comparison, ref, cg, plan_for(ref), plan_for(cg), n_resamples=800)
    assert out["value"]["abs_error"] == pytest.approx(cg.num.mean() - ref.num.mean())
    se = sigma * math.sqrt(2 / n)
    assert out["se"]["abs_error"] == pytest.approx(se, rel=0.12)
    assert out["se"]["relative_error"] == pytest.approx(se / 0.79, rel=0.12)
    assert A.significant_difference(out["value"]["abs_error"], out["se"]["abs_error"]) == 1   # 0.01 is ~40 SE


def test_a_metric_that_fails_on_most_resamples_has_no_se():
    rng = np.random.default_rng(15)
    ref = A.FrameSums.of_series(rng.normal(size=100))
    plan = plan_for(ref)
    calls = {"n": 0}

    def flaky(r, c):
        calls["n"] += 1
        if calls["n"] > 1 and calls["n"] % 3:                     # the full-data call works, 2/3 of resamples fail
            raise ValueError("no peak")
        return {"x": float(c[0][0])}

    out = A.bootstrap_metric(flaky, ref, ref, plan, plan, n_resamples=60)
    assert out["se"]["x"] is None and out["value"]["x"] == pytest.approx(ref.curve()[0])


def test_comparison_uncertainty_gives_every_metric_an_se_and_every_distance_a_floor():
    rng = np.random.default_rng(16)
    L, n_frames = 2.0, 48
    box = np.eye(3) * L
    ref_pos, cg_pos = rng.uniform(0, L, (2, n_frames, 60, 3))
    types = np.repeat([0, 1], 30)

    def curves(pos, rho):
        return {"rdf": A.rdf_frames(pos, box, bin_width=0.05), "adf": A.adf_frames(pos, box, 0.5, n_bins=18),
                "rdf A-B": A.rdf_frames(pos, box, bin_width=0.05, types=types, pair=(0, 1)),
                "density": A.FrameSums.of_series(rho)}

    ref = curves(ref_pos, rng.normal(0.79, 0.01, n_frames))
    cg = curves(cg_pos, rng.normal(0.79, 0.01, n_frames))
    out = A.comparison_uncertainty(ref, cg, n_resamples=50, seed=2)
    assert out["blocks"]["reference"]["n_blocks"] >= 8 and out["blocks"]["cg"]["n_blocks"] >= 8
    m = out["metrics"]
    assert set(m["rdf"]["se"]) >= {"mad", "max_abs_dev", "rmsd", "peak_position_error", "peak_height_error"}
    assert set(m["rdf"]["noise_floor"]) == {"mad", "max_abs_dev", "rmsd"}
    assert set(m["adf"]["se"]) == set(m["adf"]["noise_floor"]) == {"l1"}
    assert m["rdf A-B"]["se"]["mad"] > 0 and m["rdf A-B"]["noise_floor"]["mad"] > 0
    assert set(m["density"]["se"]) == {"abs_error", "relative_error"} and m["density"]["noise_floor"] == {}
    assert m["density"]["se"]["abs_error"] == pytest.approx(0.01 * math.sqrt(2 / n_frames), rel=0.4)
    assert out["floor_method"] == "halves" and 0.5 < out["floor_scale"] < 1.0
    again = A.comparison_uncertainty(ref, cg, n_resamples=50, seed=2)                 # deterministic
    assert again["metrics"] == out["metrics"] and again["blocks"] == out["blocks"]
    np.testing.assert_array_equal(again["curve_se"]["rdf"]["cg"], out["curve_se"]["rdf"]["cg"])
    # per-bin errors of an ideal-gas g(r): counting noise, 1 / sqrt(pairs expected in the bin over all frames)
    r = ref["rdf"].x
    expected = 1 / np.sqrt(60 * 59 / 2 * 4 * np.pi * r ** 2 * 0.05 / L ** 3 * n_frames)
    ratio = out["curve_se"]["rdf"]["reference"] / expected
    assert out["curve_se"]["rdf"]["reference"].shape == r.shape
    assert np.mean(ratio[(r > 0.3) & (r < 0.95)]) == pytest.approx(1.0, abs=0.25)
    # no CG run: floors only; too few frames: no error bars, and a note that says why
    alone = A.comparison_uncertainty(ref, None, n_resamples=20)
    assert alone["metrics"]["rdf"]["se"] == {} and alone["metrics"]["rdf"]["noise_floor"]["mad"] > 0
    short = A.comparison_uncertainty({k: v.frames(0, 5) for k, v in ref.items()},
                                     {k: v.frames(0, 5) for k, v in cg.items()}, n_resamples=20)
    assert short["metrics"]["rdf"]["se"] == {} and short["metrics"]["rdf"]["noise_floor"] == {}
    assert any("cannot make 8 blocks" in n for n in short["notes"])
    few = A.comparison_uncertainty({"rdf": ref["rdf"].frames(0, 9)}, {"rdf": cg["rdf"].frames(0, 9)},
                                   n_resamples=20, min_blocks=2)
    assert few["blocks"]["reference"]["n_blocks"] < 4 and few["metrics"]["rdf"]["se"]["mad"] > 0
    assert few["metrics"]["rdf"]["noise_floor"] == {} and any("no noise floor" in n for n in few["notes"])
