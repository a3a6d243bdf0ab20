"""Process-wide settings: made when the package is imported, as defaults that a user's values override."""

import logging
import os

from openmm_cgnn import settings


def test_environment_defaults_are_set_on_import_and_keep_the_users_values(monkeypatch):
    assert os.environ["HIPPYNN_USE_CUSTOM_KERNELS"]   # the package is imported: set (to the default or the user's)
    monkeypatch.delenv("HIPPYNN_USE_CUSTOM_KERNELS")
    settings.apply()
    assert os.environ["HIPPYNN_USE_CUSTOM_KERNELS"] == "False"
    monkeypatch.setenv("HIPPYNN_USE_CUSTOM_KERNELS", "triton")
    settings.apply()
    assert os.environ["HIPPYNN_USE_CUSTOM_KERNELS"] == "triton"


def test_the_simtk_warning_is_filtered_once():
    settings.apply()
    root = logging.getLogger()
    assert root.filters.count(settings.drop_simtk_warning) == 1
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "importing 'simtk.openmm' is deprecated", None, None)
    assert not settings.drop_simtk_warning(record)
