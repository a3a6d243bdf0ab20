"""Renamed public names still work for old scripts, and say what to use instead."""

import pytest


def test_old_names_warn_and_give_the_new_objects():
    from openmm_cgnn import reference, simulate
    from openmm_cgnn.demo import DemoConfig
    from openmm_cgnn.harness import HarnessConfig
    from openmm_cgnn.study import StudyConfig
    from openmm_cgnn.training import TrainConfig

    with pytest.warns(DeprecationWarning, match="use ReferenceRunError"):
        assert reference.ReferenceError is reference.ReferenceRunError
    with pytest.warns(DeprecationWarning, match="use CGSimulationBlowUpError"):
        assert simulate.CGSimulationBlowUp is simulate.CGSimulationBlowUpError
    with pytest.warns(DeprecationWarning, match="TrainConfig.preset is deprecated; use TrainConfig.from_preset"):
        assert TrainConfig.preset("tiny") == TrainConfig.from_preset("tiny")
    with pytest.warns(DeprecationWarning, match="use HarnessConfig.from_preset"):
        assert HarnessConfig.preset("tiny", n_molecules=27) == HarnessConfig.from_preset("tiny", n_molecules=27)
    with pytest.warns(DeprecationWarning, match="use StudyConfig.from_preset"):
        assert StudyConfig.preset_named("toy") == StudyConfig.from_preset("toy")
    with pytest.warns(DeprecationWarning, match="use DemoConfig.from_preset"):
        assert DemoConfig.preset_named("full") == DemoConfig.from_preset("full")
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        simulate.Nothing
