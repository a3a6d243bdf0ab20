"""The README's Python example runs as written: both model kinds through OpenMM-ML, public names only."""

import os
import re
import shutil
from pathlib import Path

import numpy as np

import openmm_cgnn
from openmm_cgnn.baselines import fit_pair_force_matching

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_python_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("\n## Python API\n"):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "no Python example in the README's 'Python API' section"
    return match.group(1)


def test_readme_python_example_runs(methanol_dataset, tiny_model_pt, tmp_path):
    # the files the example names: a mapped data set, an exported network, a fitted pair force field
    shutil.copy(methanol_dataset, tmp_path / "cg-300K.npz")
    shutil.copy(tiny_model_pt, tmp_path / "model.pt")
    ds = openmm_cgnn.CGDataset.load(methanol_dataset)
    fit_pair_force_matching([ds], cutoff=0.7, fit_volume=False).save(tmp_path / "pair.json")

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(readme_python_example(), str(README), "exec"), {"__name__": "readme_example"})
    finally:
        os.chdir(cwd)

    for kind in ("cgnn", "cgpair"):
        with np.load(tmp_path / f"frames-{kind}.npz") as frames:
            positions, energies, temperatures = frames["positions"], frames["potential_energy"], frames["temperature"]
        assert positions.shape == (10, ds.n_beads, 3), kind          # 500 steps, a frame every 50
        assert np.isfinite(positions).all() and np.isfinite(energies).all(), kind
        # Langevin at 300 K from a 300 K start: 64 beads keep a temperature near it
        assert 150.0 < temperatures.mean() < 450.0, (kind, temperatures)
