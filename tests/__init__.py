"""The test suite; a package so that tests/functional and tests/losses can import tests.helpers."""

import pytest

# pytest rewrites asserts only in test modules; the shared checks should report as much on failure
pytest.register_assert_rewrite("tests.helpers")
