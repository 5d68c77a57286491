"""Shared pytest set-up: quiet TensorFlow, keep tests on the CPU and small."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


# ------------------------------------------------------------ audio fixtures
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_configure(config):
    # `make test` (CI) leaves these out; `make test-all` runs them. Each is a
    # regression test of a fault that `benchmarks/soak.py --quick`, which CI
    # runs after the tests, also injects through the binaries.
    config.addinivalue_line(
        "markers", "slow: a multi-process fault test (bin/train or "
        "bin/extract_features runs) that the soak's quick mode also covers")


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory):
    """Directory holding the audio fixtures of testdata/make_fixtures.py.

    Generated once per session (they are tiny); layout and names are the
    constants of `testdata.make_fixtures`.
    """
    from testdata import make_fixtures  # pylint: disable=g-import-not-at-top
    return make_fixtures.make_fixtures(str(tmp_path_factory.mktemp("fixtures")))
