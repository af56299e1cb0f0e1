"""Test-case layouts of real code datasets: the readers map them (see ``curate.io.formats``)."""

from curate.io.formats import CODECONTESTS_KEYS, tests_from_record

__all__ = ["CODECONTESTS_KEYS", "tests_from_record"]
