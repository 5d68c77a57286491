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


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory):
    """Directory holding the audio fixtures of testdata/make_fixtures.py.

    Generated once per session (they are tiny); layout and names are the
    constants of `testdata.make_fixtures`.
    """
    from testdata import make_fixtures  # pylint: disable=g-import-not-at-top
    return make_fixtures.make_fixtures(str(tmp_path_factory.mktemp("fixtures")))
