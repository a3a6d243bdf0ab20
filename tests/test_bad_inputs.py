"""Every bad input a new user might give, through the command line: each must stop with exit status 2 and
one line that names the problem (no traceback), and leave the output path as it was.

The cases run in-process through ``openmm_cgnn.cli.main`` (fast); a few run as real subprocesses to prove
the exit status and the absence of a traceback end to end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openmm_cgnn.cli import main
from openmm_cgnn.dataset import CGDataset

# a tiny, fast all-atom run: validation errors must come before any of it is run
REF = ["reference", "--molecules", "27", "--cutoff", "0.5", "--ns", "0.0002", "--frame-interval", "0.05",
       "--equilibration", "0", "--platform", "CPU", "--quiet"]
SIM = ["simulate", "--ns", "0.0002", "--frame-interval", "0.1", "--equilibration", "0", "--platform", "CPU",
       "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, methanol_reference, methanol_dataset, tiny_model_dir, tiny_model_pt):
    """Good and bad input files, made once: {name: path}."""
    d = tmp_path_factory.mktemp("bad-inputs")
    f = {"reference": Path(methanol_reference), "dataset": Path(methanol_dataset),
         "model_dir": Path(tiny_model_dir), "model_pt": Path(tiny_model_pt),
         "weights": Path(tiny_model_dir) / "hippynn_weights.pt"}
    (d / "text.npz").write_text("time,energy\n0,1\n")
    (d / "empty.npz").write_bytes(b"")
    data = Path(methanol_dataset).read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    ds = CGDataset.load(methanol_dataset)
    ds.forces[3, 5, 1] = np.nan
    ds.save(d / "nan-forces.npz")
    ds = CGDataset.load(methanol_dataset)
    ds.positions[-1, 1] = ds.positions[-1, 0] + [0.01, 0.0, 0.0]   # two beads 0.01 nm apart in the last frame
    ds.save(d / "overlap.npz")
    with np.load(methanol_dataset) as z:
        arrays = dict(z)
    arrays["positions"][-1, 7, 0] = np.inf
    np.savez(d / "nan-positions.npz", **arrays)                 # written past the data set's own checks
    (d / "bad.xml").write_text("<ForceField><AtomTypes><Type name='x'</AtomTypes>")
    (d / "bad.json").write_text("{not json")
    (d / "bad.toml").write_text("[train\nmax_epochs = ")
    (d / "zero-epochs.toml").write_text("[train]\nmax_epochs = 0\n")
    (d / "absent-residue.json").write_text(json.dumps({"HOH": [{"name": "W", "atoms": ["O", "H1", "H2"]}]}))
    (d / "cg-timestep-0.json").write_text(json.dumps({"cg_timestep": 0.0}))
    (d / "a-file").write_text("in the way\n")
    truncated_dir = d / "truncated-model"
    shutil.copytree(tiny_model_dir, truncated_dir)
    weights = (truncated_dir / "hippynn_weights.pt").read_bytes()
    (truncated_dir / "hippynn_weights.pt").write_bytes(weights[: len(weights) // 3])
    model = Path(tiny_model_pt).read_bytes()
    (d / "truncated-model.pt").write_bytes(model[: len(model) // 2])
    for name in ("text.npz", "empty.npz", "truncated.npz", "nan-forces.npz", "overlap.npz", "nan-positions.npz",
                 "bad.xml", "bad.json", "bad.toml", "zero-epochs.toml", "absent-residue.json",
                 "cg-timestep-0.json", "a-file", "truncated-model", "truncated-model.pt"):
        f[name] = d / name
    f["blocked"] = d / "a-file" / "out"          # an output path below a file: cannot be written
    return f


# (case id, argv with {placeholders} for files, words the one-line message must contain)
CASES = [
    # -- reference: silent wrong results before, tracebacks before -----------------------------------
    ("ref-cutoff-negative", REF + ["--cutoff", "-1"], "--cutoff: cutoff must be positive"),
    ("ref-pressure-nan", REF + ["--pressure", "nan"], "pressure must be positive"),
    ("ref-ns-negative", REF + ["--ns", "-1"], "--ns: production must be positive"),
    ("ref-ns-zero", REF + ["--ns", "0"], "--ns: production must be positive"),
    ("ref-frame-interval-negative", REF + ["--frame-interval", "-0.1"], "--frame-interval: frame_interval must be"),
    ("ref-frame-interval-zero", REF + ["--frame-interval", "0"], "frame_interval must be positive"),
    ("ref-frame-interval-longer-than-run", REF + ["--frame-interval", "5"], "longer than the production run"),
    ("ref-timestep-zero", REF + ["--timestep", "0"], "--timestep: timestep must be positive"),
    ("ref-temperature-negative", REF + ["--temperature", "-5"], "temperature must be a positive number of kelvin"),
    ("ref-temperature-nan", REF + ["--temperature", "nan"], "temperature must be a positive number of kelvin"),
    ("ref-temperature-huge", REF + ["--temperature", "1e9"], "at most 10000 K"),
    ("ref-temperature-zero", REF + ["--temperature", "0"], "temperature must be a positive number of kelvin"),
    ("ref-density-5", REF + ["--density", "5"], "not a liquid density"),
    ("ref-seed-negative", REF + ["--seed", "-1"], "--seed: seed must be"),
    ("ref-molecules-zero", REF + ["--molecules", "0"], "--molecules: n_molecules must be >= 1"),
    ("ref-malformed-forcefield", REF + ["--forcefield", "{bad.xml}"], "cannot read the force field"),
    ("ref-missing-forcefield", REF + ["--forcefield", "no-such-file.xml"], "cannot read the force field"),
    ("ref-unknown-forcefield", REF + ["--forcefield", "amber99"], "is not available for methanol"),
    ("ref-unknown-species", REF + ["--species", "argon"], "unknown species 'argon'"),
    ("ref-unknown-platform", REF + ["--platform", "Metal"], "platform 'Metal' is not available"),
    ("ref-out-unwritable", REF + ["--out", "{blocked}/ref.npz"], "is a file, not a folder"),
    # -- map ---------------------------------------------------------------------------------------
    ("map-skip-all", ["map", "--in", "{reference}", "--skip", "100"], "--skip: skip = 100 leaves no frame"),
    ("map-skip-negative", ["map", "--in", "{reference}", "--skip", "-5"], "--skip: skip must be >= 0"),
    ("map-text-file", ["map", "--in", "{text.npz}"], "is a text file; expected an all-atom reference"),
    ("map-empty-file", ["map", "--in", "{empty.npz}"], "is empty"),
    ("map-truncated-file", ["map", "--in", "{truncated.npz}"], "is truncated or damaged"),
    ("map-missing-file", ["map", "--in", "nowhere.npz"], "does not exist"),
    ("map-a-cg-dataset", ["map", "--in", "{dataset}"], "already a mapped CG data set"),
    ("map-residue-absent", ["map", "--in", "{reference}", "--mapping", "{absent-residue.json}"],
     "names residue HOH, which the system lacks"),
    ("map-mapping-not-json", ["map", "--in", "{reference}", "--mapping", "{bad.json}"], "is not valid JSON"),
    ("map-out-unwritable", ["map", "--in", "{reference}", "--out", "{blocked}/cg.npz"], "cannot write"),
    # -- train -------------------------------------------------------------------------------------
    ("train-epochs-zero", ["train", "--data", "{dataset}", "--epochs", "0"], "--epochs: max_epochs must be >= 1"),
    ("train-config-epochs-zero", ["train", "--data", "{dataset}", "--config", "{zero-epochs.toml}"],
     "max_epochs must be >= 1"),
    ("train-config-not-toml", ["train", "--data", "{dataset}", "--config", "{bad.toml}"], "is not valid TOML"),
    ("train-config-missing", ["train", "--data", "{dataset}", "--config", "nowhere.toml"], "does not exist"),
    ("train-truncated-data", ["train", "--data", "{truncated.npz}"], "is truncated or damaged"),
    ("train-empty-data", ["train", "--data", "{empty.npz}"], "is empty"),
    ("train-text-data", ["train", "--data", "{text.npz}"], "is a text file"),
    ("train-nan-data", ["train", "--data", "{nan-forces.npz}"], "'forces' holds 1 NaN or infinite values"),
    ("train-reference-not-mapped", ["train", "--data", "{reference}"], "must be mapped first"),
    # -- export ------------------------------------------------------------------------------------
    ("export-truncated-weights", ["export", "{truncated-model}"], "it is truncated or damaged"),
    ("export-given-a-file", ["export", "{model_pt}"], "is not a trained model directory"),
    ("export-missing-dir", ["export", "nowhere"], "does not exist"),
    ("export-out-unwritable", ["export", "{model_dir}", "--out", "{blocked}/m.pt"], "cannot write"),
    # -- simulate ----------------------------------------------------------------------------------
    ("sim-start-frame-absent", SIM + ["--model", "{model_pt}", "--start", "{dataset}", "--start-frame", "100"],
     "--start-frame: start_frame 100 does not exist"),
    ("sim-pressure-nan", SIM + ["--model", "{model_pt}", "--start", "{dataset}", "--pressure", "nan"],
     "--pressure: pressure must be positive"),
    ("sim-temperature-negative", SIM + ["--model", "{model_pt}", "--start", "{dataset}", "--temperature", "-1"],
     "temperature must be a positive number of kelvin"),
    ("sim-timestep-zero", SIM + ["--model", "{model_pt}", "--start", "{dataset}", "--timestep", "0"],
     "--timestep: timestep must be positive"),
    ("sim-ns-zero", SIM + ["--model", "{model_pt}", "--start", "{dataset}", "--ns", "0"], "--ns: production"),
    ("sim-hippynn-weights-as-model", SIM + ["--model", "{weights}", "--start", "{dataset}"],
     "is the hippynn weights file of the trained model directory"),
    ("sim-model-dir-as-model", SIM + ["--model", "{model_dir}", "--start", "{dataset}"], "is a folder"),
    ("sim-text-as-model", SIM + ["--model", "{text.npz}", "--start", "{dataset}"],
     "is not an exported openmm-cgnn model"),
    ("sim-truncated-model", SIM + ["--model", "{truncated-model.pt}", "--start", "{dataset}"], "truncated"),
    ("sim-truncated-start", SIM + ["--model", "{model_pt}", "--start", "{truncated.npz}"], "truncated or damaged"),
    ("sim-empty-start", SIM + ["--model", "{model_pt}", "--start", "{empty.npz}"], "is empty"),
    ("sim-nan-start", SIM + ["--model", "{model_pt}", "--start", "{nan-positions.npz}"], "NaN or infinite"),
    ("sim-overlapping-start", SIM + ["--model", "{model_pt}", "--start", "{overlap.npz}"],
     "put two beads 0.010 nm apart"),
    ("sim-lattice-density-5", SIM + ["--model", "{model_pt}", "--beads", "512", "--density", "5"],
     "--density: density 5.0 g/cm^3 is not a liquid density"),
    ("sim-start-and-lattice", SIM + ["--model", "{model_pt}", "--start", "{dataset}", "--beads", "64",
                                     "--density", "0.7"], "not both"),
    ("sim-no-start", SIM + ["--model", "{model_pt}"], "give --start"),
    ("sim-out-unwritable", SIM + ["--model", "{model_pt}", "--start", "{dataset}", "--out", "{blocked}/sim"],
     "is a file, not a folder"),
    # -- compare -----------------------------------------------------------------------------------
    ("cmp-zero-kelvin", ["compare", "--model", "{model_pt}", "--state-points", "0K:0.787g/cm3", "--preset", "tiny"],
     "temperature must be a positive number of kelvin"),
    ("cmp-density-5", ["compare", "--model", "{model_pt}", "--state-points", "300K:5g/cm3", "--preset", "tiny"],
     "not a liquid density"),
    ("cmp-hippynn-weights-as-model", ["compare", "--model", "{weights}", "--state-points", "300K:0.787g/cm3",
                                      "--preset", "tiny"], "is the hippynn weights file"),
    ("cmp-config-timestep-zero", ["compare", "--model", "{model_pt}", "--state-points", "300K:0.787g/cm3",
                                  "--config", "{cg-timestep-0.json}"], "cg_timestep must be positive"),
    ("cmp-config-not-json", ["compare", "--model", "{model_pt}", "--state-points", "300K:0.787g/cm3",
                             "--config", "{bad.json}"], "is not valid JSON"),
    ("cmp-molecules-one", ["compare", "--model", "{model_pt}", "--state-points", "300K:0.787g/cm3",
                           "--molecules", "1"], "--molecules: n_molecules must be >= 2"),
    ("cmp-text-reference-data", ["compare", "--model", "{model_pt}", "--state-points", "300K:0.787g/cm3",
                                 "--preset", "tiny", "--reference-data", "{text.npz}"], "is a text file"),
]


def _fill(argv: list[str], files: dict[str, Path], out: Path) -> list[str]:
    filled = []
    for a in argv:
        for k, v in files.items():
            a = a.replace("{" + k + "}", str(v))
        assert "{" not in a, a
        filled.append(a)
    if "--out" not in filled and filled[0] != "export":
        filled += ["--out", str(out)]
    if filled[0] == "export" and "--out" not in filled:
        filled += ["--out", str(out)]
    return filled


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_the_output_alone(argv, words, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _fill(argv, files, out)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"openmm-cgnn {argv[0]}: error: "), err
    assert words in lines[0], lines[0]
    assert "Traceback" not in err and "overwrite=True" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the command left something behind"
    assert not files["blocked"].exists()


def test_inputs_are_left_untouched(files, tmp_path, capsys):
    """A refused command writes nothing, not even into an existing output: the same bytes are there after."""
    out = tmp_path / "exists.npz"
    out.write_bytes(b"keep me")
    assert main(["map", "--in", str(files["reference"]), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openmm_cgnn.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_subprocess_exit_status_and_no_traceback(files, tmp_path):
    res = _cli(*SIM, "--model", str(files["weights"]), "--start", str(files["dataset"]), "--out", str(tmp_path / "s"))
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"run 'openmm-cgnn export {files['model_dir']} --out model.pt' and give that file" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_version(capsys):
    from openmm_cgnn import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"openmm-cgnn {__version__}"


def test_a_quiet_run_prints_nothing(files, tmp_path):
    out = tmp_path / "sim"
    res = _cli(*SIM, "--model", str(files["model_pt"]), "--start", str(files["dataset"]), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == "", res.stderr          # no simtk.openmm warning either
    assert (out / "simulation.json").is_file()


def test_reference_blow_up_leaves_no_partial(tmp_path, capsys):
    """A run that blows up (20 fs steps) stops with one line and leaves nothing that blocks the corrected rerun."""
    out = tmp_path / "ref.npz"
    argv = [*REF, "--timestep", "20", "--equilibration", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "smaller --timestep" in err, err
    assert list(tmp_path.iterdir()) == []


def test_simulate_blow_up_before_the_first_frame_leaves_nothing(files, tmp_path, capsys):
    out = tmp_path / "sim"
    argv = [*SIM, "--model", str(files["model_pt"]), "--start", str(files["dataset"]), "--timestep", "100",
            "--equilibration", "2", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "blew up before its first frame" in err and "Nothing was written" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_reference_partial_with_other_settings_says_how_to_discard_it(tmp_path, capsys):
    out = tmp_path / "ref.npz"
    partial = tmp_path / "ref.npz.partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (partial / "frames.npz").write_bytes(b"")
    assert main([*REF, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "delete that folder" in err and "--overwrite" in err
    assert partial.is_dir() and (partial / "config.json").read_text() == "{}"


def test_failed_compare_state_point_reruns_without_overwrite(files, tmp_path, capsys):
    """A report whose state point failed (here: a force field that does not exist) does not block the
    corrected command: the rerun into the same folder needs no --overwrite."""
    from openmm_cgnn.harness import HarnessConfig, load_report

    out = tmp_path / "report"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(HarnessConfig.from_preset("tiny", aa_forcefield="no-such-forcefield.xml").to_dict()))
    base = ["compare", "--model", str(files["model_pt"]), "--state-points", "300K:0.787g/cm3", "--out", str(out),
            "--quiet"]
    assert main([*base, "--config", str(bad)]) == 2
    assert "could not be run" in capsys.readouterr().err
    assert load_report(out)["state_points"][0]["status"] == "failed"
    assert main([*base, "--preset", "tiny", "--reference-data", str(files["dataset"])]) == 0, capsys.readouterr().err
    assert load_report(out)["state_points"][0]["status"] == "complete"
    # a finished report is still protected
    assert main([*base, "--preset", "tiny", "--reference-data", str(files["dataset"])]) == 2
    assert "already holds a comparison report; choose another folder or pass --overwrite" in capsys.readouterr().err


def test_a_failed_simulation_can_be_replaced_without_overwrite(files, tmp_path, capsys):
    """simulate: an output folder holding a run that blew up is replaced by the corrected rerun."""
    out = tmp_path / "sim"
    out.mkdir()
    (out / "simulation.json").write_text(json.dumps({"status": "blew_up"}))
    assert main([*SIM, "--model", str(files["model_pt"]), "--start", str(files["dataset"]), "--out", str(out)]) == 0
    assert json.loads((out / "simulation.json").read_text())["status"] == "complete"
    assert main([*SIM, "--model", str(files["model_pt"]), "--start", str(files["dataset"]), "--out", str(out)]) == 2
    assert "already holds a simulation" in capsys.readouterr().err


def test_python_api_applies_the_same_rules():
    """The dataclasses reject what the command line rejects: one rule per quantity."""
    from openmm_cgnn.errors import CGNNError, ConfigError
    from openmm_cgnn.harness import HarnessConfig, StatePoint
    from openmm_cgnn.reference import ReferenceConfig
    from openmm_cgnn.simulate import CGSimulationConfig
    from openmm_cgnn.training import TrainConfig

    for make in (lambda: ReferenceConfig(temperature=0.0), lambda: StatePoint(0.0, density=0.787),
                 lambda: CGSimulationConfig(model="m.pt", start_dataset="d.npz", temperature=0.0)):
        with pytest.raises(ConfigError, match="temperature must be a positive number of kelvin"):
            make()
    for make in (lambda: ReferenceConfig(density=5.0), lambda: StatePoint(300.0, density=5.0),
                 lambda: CGSimulationConfig(model="m.pt", n_beads=512, density=5.0)):
        with pytest.raises(ConfigError, match="not a liquid density"):
            make()
    for make in (lambda: ReferenceConfig(pressure=float("nan")), lambda: StatePoint(300.0, pressure=float("nan")),
                 lambda: CGSimulationConfig(model="m.pt", start_dataset="d.npz", pressure=float("inf"))):
        with pytest.raises(ConfigError, match="pressure must be positive"):
            make()
    with pytest.raises(ConfigError, match="timestep must be positive"):
        HarnessConfig(aa_timestep=-0.002)
    with pytest.raises(ConfigError, match="max_epochs must be >= 1"):
        TrainConfig(max_epochs=0)
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        TrainConfig(learning_rate=float("nan"))
    for cls in ("reference.ReferenceRunError", "mapping.MappingError", "dataset.DatasetFormatError",
                "system.CGSystemError", "errors.OutputExistsError", "harness.StatePointError",
                "baselines.PairForceFieldFormatError", "cli.CLIError", "simulate.CGSimulationBlowUpError",
                "reporters.CGSimulationBlowUpError", "reference.ReferenceBlowUpError"):
        module, name = cls.split(".")
        mod = __import__(f"openmm_cgnn.{module}", fromlist=[name])
        assert issubclass(getattr(mod, name), CGNNError), cls


def test_a_mapping_with_some_absent_residues_warns_in_one_line(files, tmp_path, capsys):
    spec = tmp_path / "map.json"
    spec.write_text(json.dumps({"MEOH": [{"name": "M", "atoms": ["CB", "OG", "HG1", "HB1", "HB2", "HB3"]}],
                                "HOH": [{"name": "W", "atoms": ["O", "H1", "H2"]}]}))
    assert main(["map", "--in", str(files["reference"]), "--mapping", str(spec), "--out", str(tmp_path / "cg.npz")]) == 0
    err = capsys.readouterr().err
    assert err.strip() == "openmm-cgnn map: warning: the mapping's residues HOH are not in the system; their beads " \
                          "are unused", err
    assert CGDataset.load(tmp_path / "cg.npz").type_names == ["M"]
