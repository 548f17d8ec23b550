"""The elementwise math kernels get their first call on one thread when the model code loads."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_model_package_makes_the_first_calls():
    # A fresh interpreter: nothing else has called the kernels before the import does.
    code = "import xworld_env.model.kernels as k; assert k._warmed"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
