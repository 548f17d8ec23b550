"""What machine a benchmark ran on, recorded beside its figures."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict:
    """CPU, core count, Python and library versions, and the CUDA device if any."""
    import gymnasium
    import numpy as np
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info
