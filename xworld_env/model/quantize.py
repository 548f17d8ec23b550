"""int8 DiT blocks for the CPU.

``quantize_blocks`` returns a copy of a :class:`~xworld_env.model.dit.CausalDiT` whose blocks run
their token-wise linear layers (attention's query/key/value and output projections, the MLP's
two layers: nearly all of a pass's multiply-adds) in int8 with dynamic quantization: weights
stored in int8 with one scale per output channel, each world's input quantized with a scale
taken from its own range, products accumulated in int32 (torch's quantized CPU kernels).
Everything else (adaLN modulation, norms, attention's softmax, the residual stream, embeddings,
the final layer and the sampler) stays float32.

The rounding of int8 changes every block's output a little, and by a different amount from one
chunk to the next; X-Cache's gate sees that change in its inputs (``int8_active`` lets it pick
its thresholds by precision, as it does under autocast).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

#: The linear layers of a ``DiTBlock`` that run in int8 (module paths inside the block).
QUANTIZED_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

_STATE = threading.local()


class Int8Linear(nn.Module):
    """A float ``nn.Linear`` run in int8, its input quantized world by world.

    Dynamic quantization takes each call's input scale from the whole input; a batch of worlds
    would then round every world by the largest one's range, so that a world's output depended
    on the others in its batch. This layer quantizes each world's slice (the first axis of an
    input of three or more axes) on its own, which keeps a world's rollout its own; the price is
    one call per world, slower than one call over the batch at 16 worlds (docs/performance.md,
    "int8").

    Args:
        linear: the float layer (its weights are copied into int8, one scale per output
            channel).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        source = copy.deepcopy(linear).float()
        source.qconfig = per_channel_dynamic_qconfig
        with warnings.catch_warnings():
            # torch marks its eager quantization API deprecated (for torchao); the pinned torch
            # has it, and its int8 CPU kernels are what this precision measures.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantize_per_channel.*",
                                    category=UserWarning)
            self.linear = DynamicLinear.from_float(source)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out); with three or more axes, the first is the world axis."""
        if x.dim() < 3 or x.shape[0] == 1:
            return self.linear(x)
        return torch.stack([self.linear(world) for world in x.unbind(0)])


def quantize_blocks(dit: nn.Module) -> nn.Module:
    """A copy of ``dit`` (on the CPU) whose blocks' ``QUANTIZED_LAYERS`` compute in int8
    (:class:`Int8Linear`).

    ``dit`` itself is left as it was. The copy is for inference only.

    Raises:
        ValueError: ``dit`` is not on the CPU, or torch has no quantized CPU engine.
    """
    device = next(dit.parameters()).device
    if device.type != "cpu":
        raise ValueError(
            f"int8 blocks run on the CPU only (dynamic quantization), the DiT is on {device}; "
            "use dtype 'bfloat16' or 'float16' there"
        )
    if set(torch.backends.quantized.supported_engines) <= {"none"}:
        raise ValueError("this torch build has no quantized CPU engine; use dtype 'float32'")
    quantized = copy.deepcopy(dit).eval()
    for block in quantized.blocks:
        for name in QUANTIZED_LAYERS:
            parent, _, attr = name.rpartition(".")
            owner = block.get_submodule(parent)
            setattr(owner, attr, Int8Linear(getattr(owner, attr)))
    return quantized


@contextlib.contextmanager
def int8_blocks() -> Iterator[None]:
    """Marks the DiT passes run inside it as int8 ones (for ``int8_active``)."""
    before = getattr(_STATE, "active", False)
    _STATE.active = True
    try:
        yield
    finally:
        _STATE.active = before


def int8_active() -> bool:
    """Whether the running pass is marked int8 (``int8_blocks``) in this thread."""
    return getattr(_STATE, "active", False)
