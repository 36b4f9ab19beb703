"""Model-generic checks (``model_checks.py``) over the organ models of the catalogue
(circulation, PBPK, glucose, electrophysiology): every entry ``test_catalogue.py`` leaves."""

from catalogue import CATALOGUE
from model_checks import *  # noqa: F403  (the checks are collected here)

ENTRIES = [e for e in CATALOGUE if not e.id.startswith(("pk", "pd"))]


def pytest_generate_tests(metafunc):
    if "e" in metafunc.fixturenames:
        metafunc.parametrize("e", ENTRIES, ids=[e.id for e in ENTRIES])
