"""The package docstring's example runs."""
import doctest

import amphora_kanban


def test_the_package_example_runs():
    result = doctest.testmod(amphora_kanban)
    assert result.attempted > 0 and result.failed == 0
