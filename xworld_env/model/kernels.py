"""A first call of torch's elementwise math kernels on one thread, for reproducible rollouts.

In this torch build (x86 CPU, oneMKL), the first ``torch.cos`` of a process, when its work was
split across the intra-op threads, now and then returned values up to 1.5e-4 off for a block of
one thread's share (the DiT's rotary tables, a (224, 16) array; every later call exact): in 7 of
100 processes of a script, and in 2 of 6 runs of the demo's drives, whose first world then
rolled out differently from every later one under the same seed and actions. Calling each
function once on a one-element tensor, which never splits across threads, before any parallel
call removed it: none of 100 processes of the same script, none of 10 demo drives.
"""

from __future__ import annotations

import torch

#: Elementwise functions whose first call is made here, on one element, in each precision of
#: ``_DTYPES``: the transcendental ones torch may hand to a vector math library.
MATH_FUNCTIONS = (
    torch.cos, torch.sin, torch.tan, torch.acos, torch.asin, torch.atan, torch.cosh, torch.sinh,
    torch.tanh, torch.exp, torch.expm1, torch.log, torch.log1p, torch.log2, torch.log10,
    torch.sqrt, torch.rsqrt, torch.erf, torch.erfc, torch.erfinv, torch.lgamma, torch.sigmoid,
)
_DTYPES = (torch.float32, torch.float64)
_warmed = False


def warm_math_kernels() -> None:
    """Calls every function of ``MATH_FUNCTIONS`` once on a one-element CPU tensor of each
    precision (once per process; later calls return at once)."""
    global _warmed
    if _warmed:
        return
    with torch.no_grad():
        for dtype in _DTYPES:
            x = torch.full((1,), 0.5, dtype=dtype)
            for function in MATH_FUNCTIONS:
                function(x)
    _warmed = True
