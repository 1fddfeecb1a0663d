import os

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=40)
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True)
# Under qemu (tests/arm/run.sh) everything runs ~20x slower: fewer examples per property.
settings.register_profile("emulated", deadline=None, max_examples=10, derandomize=True)
if os.environ.get("TINYLM_TEST_EMULATED"):
    settings.load_profile("emulated")
else:
    settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
