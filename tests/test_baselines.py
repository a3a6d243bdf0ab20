"""Tests of the classical baseline: pair force matching (MS-CG) and its OpenMM System.

Synthetic data: a short OpenMM Langevin run of a Lennard-Jones fluid (216 beads, 20 frames),
whose labels are the exact shifted-force LJ pair forces recomputed in double precision, so the
pair force that force matching must recover is known.
"""

from __future__ import annotations

import json

import numpy as np
import openmm
import pytest
from openmm import app, unit
from vesin import NeighborList

from openmm_cgnn.baselines import (PairForceField, PairForceFieldFormatError,
                                   fit_pair_force_matching)
from openmm_cgnn.dataset import CGDataset

RC = 1.0            # nm, cutoff of the true potential and of the fit
EPS = 1.5           # kJ/mol
SIGMA = {("A", "A"): 0.37, ("A", "B"): 0.35, ("B", "B"): 0.33}  # nm
BOX = 2.62          # nm, 216 beads -> 12 beads/nm^3
N_SIDE = 6
N_FRAMES = 20


def lj_force(r: np.ndarray, sigma: float) -> np.ndarray:
    """Shifted-force LJ pair force -dU/dr (kJ/mol/nm), zero at and beyond RC."""
    def f(x):
        sr6 = (sigma / x) ** 6
        return 24 * EPS * (2 * sr6 * sr6 - sr6) / x
    r = np.asarray(r, dtype=np.float64)
    return np.where(r < RC, f(np.maximum(r, 1e-3)) - f(RC), 0.0)


def pair_forces(pos, box, types, names, fmag_of):
    """Forces from pair force magnitudes fmag_of(r, name_a, name_b), double precision, vesin pairs."""
    i, j, d = NeighborList(cutoff=RC, full_list=False).compute(points=pos, box=box, periodic=True,
                                                               quantities="ijD")
    r = np.linalg.norm(d, axis=1)
    fmag = np.zeros_like(r)
    for a in range(len(names)):
        for b in range(len(names)):
            sel = (types[i] == a) & (types[j] == b)
            if sel.any():
                fmag[sel] = fmag_of(r[sel], names[a], names[b])
    fvec = (fmag / r)[:, None] * d
    out = np.zeros_like(pos)
    np.add.at(out, j, fvec)
    np.add.at(out, i, -fvec)
    return out


def true_fmag(r, a, b):
    return lj_force(r, SIGMA[tuple(sorted((a, b)))])


def simulate_lj(names: list[str], seed: int = 1) -> CGDataset:
    """A Lennard-Jones fluid from a short OpenMM run; labels are exact pair forces."""
    n = N_SIDE ** 3
    types = np.arange(n) % len(names)
    box = np.eye(3) * BOX
    system = openmm.System()
    for _ in range(n):
        system.addParticle(32.0)
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box))
    expr = ("4*eps*((s/r)^12 - (s/r)^6) - uc + (r - rc)*fc;"
            "uc = 4*eps*((s/rc)^12 - (s/rc)^6); fc = 24*eps*(2*(s/rc)^12 - (s/rc)^6)/rc;"
            f"s = 0.5*(s1 + s2); eps = {EPS}; rc = {RC}")
    nb = openmm.CustomNonbondedForce(expr)
    nb.addPerParticleParameter("s")
    own = {"A": 0.37, "B": 0.33}
    for t in types:
        nb.addParticle([own[names[t]]])
    nb.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(RC)
    system.addForce(nb)
    grid = np.stack(np.meshgrid(*[np.arange(N_SIDE)] * 3, indexing="ij"), -1).reshape(-1, 3)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.005 * unit.picosecond)
    integrator.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "2"})
    ctx.setPositions((grid + 0.5) * BOX / N_SIDE)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    integrator.step(400)
    pos, frc = [], []
    for _ in range(N_FRAMES):
        integrator.step(40)
        x = ctx.getState(getPositions=True, enforcePeriodicBox=True).getPositions(asNumpy=True)
        x = np.asarray(x.value_in_unit(unit.nanometer))
        pos.append(x)
        frc.append(pair_forces(x, box, types, names, true_fmag))
    meta = {"state": {"temperature_K": 300.0, "pressure_bar": None, "density_g_cm3": 0.64}}
    return CGDataset(np.array(pos), np.array(frc), np.broadcast_to(box, (N_FRAMES, 3, 3)).copy(),
                     np.zeros(N_FRAMES), types, names, np.full(n, 32.0), np.arange(n), meta)


@pytest.fixture(scope="module")
def lj1() -> CGDataset:
    return simulate_lj(["A"])


@pytest.fixture(scope="module")
def lj2() -> CGDataset:
    return simulate_lj(["A", "B"], seed=2)


@pytest.fixture(scope="module")
def ff1(lj1) -> PairForceField:
    return fit_pair_force_matching([lj1], cutoff=RC, bin_width=0.01, regularization=1e-3)


@pytest.fixture(scope="module")
def ff2(lj2) -> PairForceField:
    return fit_pair_force_matching([lj2], cutoff=RC, bin_width=0.01, regularization=1e-3)


def sampled_r(ff: PairForceField, pair: int, min_count: int = 20) -> np.ndarray:
    """Distances in bins with at least ``min_count`` pair samples, a bin above the table onset."""
    r = np.linspace(0.0, ff.cutoff, 4001)[1:-1]
    k = np.minimum((r / ff.bin_width).astype(int), ff.pair_counts.shape[1] - 1)
    return r[(ff.pair_counts[pair][k] >= min_count) & (r >= ff.onset[pair] + ff.bin_width)]


def cg_topology(ds: CGDataset, box_nm: float = BOX) -> app.Topology:
    top = app.Topology()
    chain = top.addChain()
    for t in ds.bead_types:
        top.addAtom(ds.type_names[t], None, top.addResidue("CG", chain))
    top.setPeriodicBoxVectors(np.eye(3) * box_nm * unit.nanometer)
    return top


def openmm_context(ff: PairForceField, ds: CGDataset, frame: int = 0) -> openmm.Context:
    system = ff.create_system(cg_topology(ds), bead_masses=ds.bead_masses)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(ds.positions[frame])
    return ctx


# -- recovery ------------------------------------------------------------------------------------

def test_recovers_known_lj_pair_force(ff1):
    r = sampled_r(ff1, 0)
    assert r.min() < 0.35 and r.max() > 0.99  # the sampled range covers the wall to the cutoff
    truth = lj_force(r, SIGMA["A", "A"])
    model = ff1.learned_force(r) + ff1.prior.force(r)
    err = np.abs(model - truth)
    scale = np.abs(truth).max()  # ~450-490 kJ/mol/nm at the repulsive wall
    # Measured over 5 seeds: max 4.6-6.6 kJ/mol/nm (1.0-1.4 % of scale, at r = 0.34-0.35 nm), RMS
    # 0.45-0.55, max 0.48-0.50 for r >= 0.40 nm. This is the resolution of the 0.01 nm hat basis:
    # merely interpolating the true force on the grid errs by up to 12.5 (wall) and 0.62 (r >= 0.40).
    assert err.max() < 0.03 * scale, (err.max(), r[err.argmax()])
    assert np.sqrt(np.mean(err ** 2)) < 1.0
    assert err[r >= 0.40].max() < 1.0
    # the simulated (spline) force agrees with the truth just as well (measured 0.9-1.4 %)
    assert np.abs(ff1.pair_force(r) - truth).max() < 0.03 * scale


def test_recovers_each_pair_type(ff2):
    assert ff2.pair_types == [("A", "A"), ("A", "B"), ("B", "B")]
    for p, key in enumerate(ff2.pair_types):
        r = sampled_r(ff2, p)
        assert r.min() < SIGMA[key] and r.max() > 0.99
        truth = lj_force(r, SIGMA[key])
        err = np.abs(ff2.learned_force(r, p) + ff2.prior.force(r) - truth)
        # measured over 5 seeds: max 1.1-2.0 % of max |f|, RMS 0.28-0.60, r >= 0.40 nm: <= 0.54
        assert err.max() < 0.04 * np.abs(truth).max(), (key, err.max(), r[err.argmax()])
        assert np.sqrt(np.mean(err ** 2)) < 1.0, key
        assert err[r >= 0.40].max() < 1.0, key


def test_exact_recovery_of_a_representable_force(lj1, ff1):
    """Labels made by the model itself (hat force + prior): unregularised MS-CG returns its table."""
    def model_fmag(r, a, b):
        return ff1.learned_force(r) + ff1.prior.force(r)
    forces = np.array([pair_forces(x, lj1.boxes[0], lj1.bead_types, lj1.type_names, model_fmag)
                       for x in lj1.positions])
    ds = CGDataset(lj1.positions, forces, lj1.boxes, lj1.potential_energy, lj1.bead_types, lj1.type_names,
                   lj1.bead_masses, lj1.bead_residues, lj1.metadata)
    refit = fit_pair_force_matching([ds], cutoff=RC, bin_width=0.01, regularization=0.0, prior=ff1.prior)
    np.testing.assert_array_equal(refit.onset, ff1.onset)
    assert np.abs(refit.force - ff1.force).max() < 1e-6 * np.abs(ff1.force).max()
    assert refit.provenance["train_force_rmse"] < 1e-5


def test_taper_and_energy_table(ff1):
    onset, h = ff1.onset[0], ff1.bin_width
    assert onset == pytest.approx(ff1.prior.taper)
    r_zero = (np.floor(onset / h + 1e-9) - 1) * h  # the last node fixed at zero
    below = ff1.r <= r_zero + 1e-12
    assert onset - 2 * h < r_zero <= onset - h + 1e-12
    assert below.sum() >= 30 and np.all(ff1.force[0][below] == 0.0)  # only the prior acts there
    assert np.all(ff1.force[0][~below][:3] != 0.0)
    r = np.linspace(0.0, r_zero, 200)
    assert np.all(ff1.learned_force(r) == 0.0)
    # the simulated (spline) force: the prior alone, up to spline ringing that decays below the ramp
    r = np.linspace(0.01, r_zero - 2 * h, 50)
    np.testing.assert_allclose(ff1.pair_force(r), ff1.prior.force(r), rtol=1e-6, atol=1e-3)
    assert ff1.force[0, -1] == 0.0 and ff1.energy[0, -1] == 0.0  # zero force and energy at the cutoff
    # energy = integral of the force from the cutoff inward (trapezoid is exact for hat functions)
    np.testing.assert_allclose(-np.diff(ff1.energy[0]) / h, 0.5 * (ff1.force[0, 1:] + ff1.force[0, :-1]),
                               rtol=1e-9, atol=1e-9)
    # and the learned energy's derivative is minus the learned force between nodes
    x = np.linspace(0.3, 0.95, 300)
    num = -(ff1.learned_energy(x + 1e-6) - ff1.learned_energy(x - 1e-6)) / 2e-6
    np.testing.assert_allclose(num, ff1.learned_force(x), atol=1e-4 * np.abs(ff1.force).max())


def test_training_error_and_evaluate(lj1, ff1):
    prov = ff1.provenance
    assert prov["state_points"] == [lj1.metadata["state"]] and prov["n_frames"] == [N_FRAMES]
    assert prov["train_force_rmse"] < 0.03 * prov["train_force_rms_labels"]
    ev = ff1.evaluate([lj1])
    assert ev["force_rmse"] < 0.03 * prov["train_force_rms_labels"]
    assert ev["n_components"] == lj1.forces.size


# -- OpenMM --------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["ff1", "ff2"])
def test_openmm_forces_match_numpy(which, request):
    ff = request.getfixturevalue(which)
    ds = request.getfixturevalue("lj1" if which == "ff1" else "lj2")
    for frame in (0, N_FRAMES - 1):
        ctx = openmm_context(ff, ds, frame)
        state = ctx.getState(getEnergy=True, getForces=True)
        e_mm = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f_mm = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        e_np, f_np = ff.energy_forces(ds.positions[frame], ds.boxes[frame], ds.bead_types)
        assert abs(e_mm - e_np) < 1e-7 * max(1.0, abs(e_np)), (e_mm, e_np)
        assert np.abs(f_mm - f_np).max() < 1e-6 * np.abs(f_np).max()
        # and both are close to the true forces of the data
        assert np.sqrt(np.mean((f_np - ds.forces[frame]) ** 2)) < 0.03 * np.sqrt(np.mean(ds.forces[frame] ** 2))


def test_openmm_forces_are_minus_energy_gradient(ff2, lj2):
    ctx = openmm_context(ff2, lj2)
    pos0 = lj2.positions[0].copy()
    forces = np.asarray(ctx.getState(getForces=True).getForces(asNumpy=True)
                        .value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    rng = np.random.default_rng(0)
    delta = 1e-5
    for atom in rng.choice(len(pos0), 4, replace=False):
        for axis in range(3):
            e = []
            for sign in (1, -1):
                pos = pos0.copy()
                pos[atom, axis] += sign * delta
                ctx.setPositions(pos)
                e.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            fd = -(e[0] - e[1]) / (2 * delta)
            assert abs(fd - forces[atom, axis]) < 1e-3 * max(1.0, abs(forces[atom, axis])), (atom, axis, fd)


def test_create_system_settings(ff1, lj1):
    top = cg_topology(lj1)
    system = ff1.create_system(top, bead_masses=lj1.bead_masses)
    assert system.getNumParticles() == lj1.n_beads
    assert system.getParticleMass(0).value_in_unit(unit.dalton) == pytest.approx(32.0)
    box = np.array([v.value_in_unit(unit.nanometer) for v in system.getDefaultPeriodicBoxVectors()])
    np.testing.assert_allclose(box, np.eye(3) * BOX)
    (force,) = [system.getForce(k) for k in range(system.getNumForces())]
    assert isinstance(force, openmm.CustomNonbondedForce)
    assert force.getNonbondedMethod() == openmm.CustomNonbondedForce.CutoffPeriodic
    assert force.getCutoffDistance().value_in_unit(unit.nanometer) == pytest.approx(RC)
    assert not force.getUseSwitchingFunction() and not force.getUseLongRangeCorrection()
    with pytest.raises(ValueError, match="bead_masses"):
        ff1.create_system(top)  # CG atoms have no element
    with pytest.raises(ValueError, match="bead_masses has shape"):
        ff1.create_system(top, bead_masses=lj1.bead_masses[:-1])
    with pytest.raises(ValueError, match="half the box"):
        ff1.create_system(cg_topology(lj1, box_nm=1.5), bead_masses=lj1.bead_masses)
    other = app.Topology()
    other.addAtom("X", None, other.addResidue("CG", other.addChain()))
    other.setPeriodicBoxVectors(np.eye(3) * BOX * unit.nanometer)
    with pytest.raises(ValueError, match="not bead types"):
        ff1.create_system(other, bead_masses=[32.0])


# -- files and input checks ----------------------------------------------------------------------

def test_save_load_round_trip(ff2, lj2, tmp_path):
    path = ff2.save(tmp_path / "pair.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair.json"]  # no temporary left behind
    raw = json.loads(path.read_text())
    assert raw["format"] == "openmm-cgnn/pair-force-field"
    assert raw["units"]["force"] == "kJ/mol/nm" and raw["units"]["r"] == "nm"
    back = PairForceField.load(path)
    np.testing.assert_array_equal(back.force, ff2.force)
    np.testing.assert_array_equal(back.energy, ff2.energy)
    np.testing.assert_array_equal(back.r, ff2.r)
    assert back.prior == ff2.prior and back.type_names == ff2.type_names
    e0, f0 = ff2.energy_forces(lj2.positions[3], lj2.boxes[3], lj2.bead_types)
    e1, f1 = back.energy_forces(lj2.positions[3], lj2.boxes[3], lj2.bead_types)
    assert e0 == e1 and np.array_equal(f0, f1)


def test_load_refuses_bad_files(ff1, tmp_path):
    raw = ff1.to_dict()
    bad = dict(raw, format="something-else")
    (tmp_path / "a.json").write_text(json.dumps(bad, default=float))
    with pytest.raises(PairForceFieldFormatError, match="format"):
        PairForceField.load(tmp_path / "a.json")
    tampered = json.loads(json.dumps(raw, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    tampered["energy"][0][10] += 1.0
    (tmp_path / "b.json").write_text(json.dumps(tampered))
    with pytest.raises(PairForceFieldFormatError, match="integral"):
        PairForceField.load(tmp_path / "b.json")
    with pytest.raises(FileNotFoundError):
        PairForceField.load(tmp_path / "missing.json")


def test_mismatched_type_names_refused(lj1, ff1):
    other = CGDataset(lj1.positions[:2], lj1.forces[:2], lj1.boxes[:2], lj1.potential_energy[:2],
                      lj1.bead_types, ["MEOH"], lj1.bead_masses, lj1.bead_residues, lj1.metadata)
    with pytest.raises(ValueError, match="mismatched bead type names"):
        fit_pair_force_matching([lj1, other], cutoff=RC)
    with pytest.raises(ValueError, match="mismatched bead type names"):
        ff1.evaluate([other])


def test_bad_settings_refused(lj1):
    with pytest.raises(ValueError, match="whole number"):
        fit_pair_force_matching([lj1], cutoff=RC, bin_width=0.03)
    with pytest.raises(ValueError, match="half the box"):
        fit_pair_force_matching([lj1], cutoff=1.4, bin_width=0.01)
    with pytest.raises(ValueError, match="no data sets"):
        fit_pair_force_matching([], cutoff=RC)
