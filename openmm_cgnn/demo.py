"""The end-to-end demo behind ``make demo``: reference -> map -> train -> export -> compare.

Every stage writes its own file in the output folder and is skipped when that file is already there,
so an interrupted demo picks up where it stopped (the all-atom run also resumes mid-way).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .deprecation import renamed
from .errors import ConfigError
from .files import write_json_atomic


@dataclass
class DemoConfig:
    """The demo's settings; ``preset`` "cpu" fits a 2-core CPU in about 15 minutes, "full" wants a GPU."""

    preset: str = "cpu"
    species: str = "methanol"
    n_molecules: int = 125
    temperature: float = 300.0             # K, the training state point ...
    density: float = 0.787                 # g/cm^3
    equilibration: float = 10.0            # ps, all-atom
    production: float = 24.0               # ps, all-atom training data
    frame_interval: float = 0.2            # ps
    aa_cutoff: float = 0.9                 # nm
    train_preset: str = "tiny"
    max_epochs: int | None = 8
    volume_source: str = "cg-nvt"          # the volume term's CG pressure: a short CG NVT run ...
    volume_nvt_ps: float = 6.0             # ... of this length (ps, after 1 ps of equilibration)
    state_points: list[str] = field(default_factory=lambda: ["300K:0.787g/cm3", "400K:0.787g/cm3", "300K:1bar"])
    harness_preset: str = "default"
    adf_shell_cutoff: float | None = 0.6   # nm: methanol's whole first shell (its RDF minimum after the
                                           # split first peak), the same at every state point
    platform: str | None = None

    @classmethod
    def from_preset(cls, name: str) -> "DemoConfig":
        """``"cpu"``: about 15 minutes on 2 cores (tiny network); ``"full"``: the paper network and sizes."""
        if name == "cpu":
            return cls()
        if name == "full":
            return cls(preset="full", n_molecules=512, equilibration=100.0, production=1000.0, frame_interval=1.0,
                       aa_cutoff=1.0, train_preset="paper", max_epochs=None, harness_preset="full", volume_nvt_ps=50.0)
        raise ConfigError(f"unknown demo preset {name!r}; choose 'cpu' or 'full'", "preset")

    preset_named = renamed("from_preset")   # the old name


def run_demo(out: str | Path = "demo-output", config: DemoConfig | None = None) -> Path:
    """Run the whole pipeline on the built-in methanol default; return the path of ``report.md``."""
    from .export import export_model
    from .harness import HarnessConfig, compare, summary_lines
    from .statepoints import parse_state_points
    from .mapping import map_reference
    from .reference import ReferenceConfig, run_reference
    from .training import TrainConfig, train

    config = config or DemoConfig()
    from .files import make_output_dir

    out = make_output_dir(out)
    write_json_atomic(out / "demo.json", asdict(config))
    started = time.perf_counter()

    aa, cg = out / "reference-aa.npz", out / "train-cg.npz"
    if not aa.exists():
        run_reference(ReferenceConfig(species=config.species, n_molecules=config.n_molecules,
                                      temperature=config.temperature, density=config.density,
                                      cutoff=config.aa_cutoff, equilibration=config.equilibration,
                                      production=config.production, frame_interval=config.frame_interval,
                                      platform=config.platform), aa)
    if not cg.exists():
        map_reference(aa, cg)
        print(f"[demo] mapped data set -> {cg}")

    model_dir, model_pt = out / "model", out / "model.pt"
    if not (model_dir / "metadata.json").exists():
        tc = TrainConfig.from_preset(config.train_preset)
        if config.max_epochs is not None:
            tc.max_epochs = config.max_epochs
        tc.volume_source, tc.volume_nvt_ps, tc.volume_nvt_equilibration_ps = config.volume_source, config.volume_nvt_ps, 1.0
        train([cg], tc, model_dir, overwrite=True)
    if not model_pt.exists():
        export_model(model_dir, model_pt, dtype="float32")
        print(f"[demo] exported model -> {model_pt}")

    harness_config = HarnessConfig.from_preset(config.harness_preset)
    harness_config.n_molecules = config.n_molecules
    harness_config.platform = config.platform
    harness_config.adf_shell_cutoff = config.adf_shell_cutoff
    report = compare(model_pt, parse_state_points(",".join(config.state_points)), out / "report", harness_config,
                     reference_datasets=[cg], overwrite=True)
    report_md = out / "report" / "report.md"
    minutes = (time.perf_counter() - started) / 60.0
    print(f"\n[demo] finished in {minutes:.1f} min. Report: {report_md}")
    for line in summary_lines(report):
        print("  " + line)
    return report_md

