"""int8 DiT blocks for the CPU.

``quantize_blocks`` returns a copy of a :class:`~xworld_env.model.dit.CausalDiT` whose blocks run
their token-wise linear layers (attention's query/key/value and output projections, the MLP's
two layers: nearly all of a pass's multiply-adds) in int8 with static activation ranges:
weights stored in int8 with one scale per output channel, inputs rounded to 8 bits on a grid
fixed per layer and pass, products accumulated in int32 (oneDNN's int8 CPU kernels, with the
MLP's GELU fused into its first layer, whose kernel rounds its output straight onto the second
layer's input grid: ``Int8Mlp``). Everything else (adaLN modulation, norms, the residual
stream, embeddings, the final layer and the sampler) stays float32, and attention's products
run in the precision ``dit.attention_precision`` names (the engine's ``attention_dtype``).

The grids come from a calibration (``record_ranges``): the range of each layer's input in each
pass of a chunk (denoising step ``s``, or the KV-update pass), recorded on float32 runs and
widened by ``RANGE_MARGIN``. A grid that does not depend on the input keeps a world's rollout
independent of the other worlds in its batch, lets one call serve a whole batch, and keeps a
change in one token from moving the rounding of the others. The pass being run is named with
``dit_pass`` (the engine does it around every pass).

The rounding of int8 changes every block's output a little; X-Cache's gate sees that change in
its inputs (``int8_active`` lets it pick its thresholds by precision, as it does under autocast).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from xworld_env.model.marks import mark, marked

#: The linear layers of a ``DiTBlock`` that run in int8 (module paths inside the block).
QUANTIZED_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
#: Factor by which a calibrated range is widened about its middle, for inputs a little beyond
#: what calibration saw (they are clipped to the grid's ends).
RANGE_MARGIN = 1.2

#: Calibrated input ranges: ``"blocks.<l>.<layer>"`` -> pass step (``-1`` for the KV-update
#: pass) -> (lowest, highest) value seen.
ActivationRanges = dict[str, dict[int, tuple[float, float]]]

def _onednn_int8() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


def _uint8(x: Tensor) -> Tensor:
    """The raw uint8 values of a quint8 tensor, without a copy."""
    return torch.empty(0, dtype=torch.uint8).set_(x.untyped_storage(), 0, x.shape)


def _quiet_quantize_warning() -> None:
    """Takes, silenced, the one warning per process torch gives on its first quantized tensor
    (the API is marked deprecated upstream; the pinned torch has it, and it is the fastest way
    to round an input to its grid here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)


class Int8Linear(nn.Module):
    """A float ``nn.Linear`` run in int8 on fixed input grids, one per pass.

    Args:
        linear: the float layer (its weights are copied into int8, one scale per output
            channel).
        ranges: pass step -> (lowest, highest) input value, from a calibration.
        gelu: apply tanh-GELU to the output (fused into the kernel).
        margin: factor by which each range is widened about its middle.
    """

    def __init__(
        self,
        linear: nn.Linear,
        ranges: dict[int, tuple[float, float]],
        gelu: bool = False,
        margin: float = RANGE_MARGIN,
    ) -> None:
        super().__init__()
        if not ranges:
            raise ValueError("Int8Linear needs the input range of at least one pass")
        _quiet_quantize_warning()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(quantized, None)
        self.weight_scale = scale
        self.weight_zero = torch.zeros(weight.shape[0], dtype=torch.long)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.out_features = weight.shape[0]
        self.post = ("gelu", "tanh") if gelu else ("none", "")
        self.grids = {step: _grid(lo, hi, margin) for step, (lo, hi) in ranges.items()}

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out), on the grid of the pass named by ``dit_pass``."""
        grid = self.grid()
        out = self.run(self.codes(x, grid), grid)
        return out.view(*x.shape[:-1], self.out_features)

    def grid(self) -> tuple[float, int]:
        """(scale, zero point) of the input grid of the pass named by ``dit_pass``."""
        step = current_pass()
        if step not in self.grids:
            raise RuntimeError(
                f"int8 layer called in pass {step!r}; it has grids for passes "
                f"{sorted(self.grids)} (run DiT passes inside dit_pass(step))"
            )
        return self.grids[step]

    @staticmethod
    def codes(x: Tensor, grid: tuple[float, int]) -> Tensor:
        """(..., in) float inputs -> (rows, in) uint8 codes on ``grid``."""
        # _uint8 reads the quantized storage in row-major order.
        flat = x.reshape(-1, x.shape[-1]).float().contiguous()
        return _uint8(torch.quantize_per_tensor(flat, *grid, torch.quint8))

    def run(self, codes: Tensor, grid: tuple[float, int],
            out_grid: tuple[float, int] | None = None) -> Tensor:
        """(rows, in) uint8 codes on ``grid`` -> (rows, out) float32 outputs, or, with
        ``out_grid``, the outputs' uint8 codes on that grid (rounded in the kernel)."""
        out_scale, out_zero, out_dtype = (1.0, 0, torch.float32) if out_grid is None else (
            *out_grid, None)
        return torch.ops.onednn.qlinear_pointwise(
            codes, *grid, self.packed, self.weight_scale, self.weight_zero, self.bias,
            out_scale, out_zero, out_dtype, self.post[0], [], self.post[1],
        )


class Int8Mlp(nn.Module):
    """A DiT MLP (``fc1``, tanh-GELU, ``fc2``) whose hidden layer stays in int8: ``fc1``'s
    kernel applies the GELU and rounds its output straight onto ``fc2``'s input grid, which is
    what ``fc2(fc1(x))`` computes, without the float hidden layer in between.

    Args:
        fc1: the first layer, with GELU fused (``Int8Linear(..., gelu=True)``).
        fc2: the second layer.
    """

    def __init__(self, fc1: Int8Linear, fc2: Int8Linear) -> None:
        super().__init__()
        if fc1.post[0] != "gelu":
            raise ValueError("Int8Mlp needs a first layer with its GELU fused")
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x: Tensor) -> Tensor:
        """(..., d) -> (..., d), on the grids of the pass named by ``dit_pass``."""
        grid, hidden_grid = self.fc1.grid(), self.fc2.grid()
        hidden = self.fc1.run(self.fc1.codes(x, grid), grid, out_grid=hidden_grid)
        return self.fc2.run(hidden, hidden_grid).view(*x.shape[:-1], self.fc2.out_features)


def _grid(lo: float, hi: float, margin: float) -> tuple[float, int]:
    """(scale, zero point) of the uint8 grid over [lo, hi] widened by ``margin``, zero on it."""
    middle, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * margin
    lo, hi = min(middle - half, 0.0), max(middle + half, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    return scale, int(min(255, max(0, round(-lo / scale))))


def check_int8_device(device: torch.device) -> None:
    """Raises ``ValueError`` unless int8 blocks can run on ``device`` (the CPU, with a torch
    build that has oneDNN's int8 kernels)."""
    if device.type != "cpu":
        raise ValueError(
            f"int8 blocks run on the CPU only, the DiT is on {device}; use dtype 'bfloat16' or "
            "'float16' there"
        )
    if not _onednn_int8():
        raise ValueError("this torch build has no oneDNN int8 kernels; use dtype 'float32'")


def quantize_blocks(
    dit: nn.Module, ranges: ActivationRanges, margin: float = RANGE_MARGIN
) -> nn.Module:
    """A copy of ``dit`` (on the CPU) whose blocks' ``QUANTIZED_LAYERS`` compute in int8
    (:class:`Int8Linear`) on the grids of ``ranges`` (``record_ranges``).

    ``dit`` itself is left as it was. The copy is for inference only, inside ``dit_pass``.

    Raises:
        ValueError: ``dit`` is not on the CPU, torch has no oneDNN int8 kernels, or ``ranges``
            lacks a quantized layer of ``dit``.
    """
    check_int8_device(next(dit.parameters()).device)
    missing = [key for key, _, _ in _quantized_layers(dit) if not ranges.get(key)]
    if missing:
        raise ValueError(f"activation ranges lack {len(missing)} layers, e.g. {missing[0]!r}")
    quantized = copy.deepcopy(dit).eval()
    for key, owner, attr in _quantized_layers(quantized):
        layer = getattr(owner, attr)
        # The MLP's tanh-GELU runs fused into its first layer's kernel.
        gelu = attr == "fc1" and isinstance(owner.act, nn.GELU) and owner.act.approximate == "tanh"
        setattr(owner, attr, Int8Linear(layer, ranges[key], gelu=gelu, margin=margin))
    for block in quantized.blocks:
        if block.mlp.fc1.post[0] == "gelu":
            block.mlp = Int8Mlp(block.mlp.fc1, block.mlp.fc2)
    return quantized


def _quantized_layers(dit: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(``ActivationRanges`` key, owning module, attribute) of every quantized layer."""
    for l, block in enumerate(dit.blocks):  # noqa: E741
        for name in QUANTIZED_LAYERS:
            parent, _, attr = name.rpartition(".")
            yield f"blocks.{l}.{name}", block.get_submodule(parent), attr


@contextlib.contextmanager
def record_ranges(dit: nn.Module) -> Iterator[ActivationRanges]:
    """Records the input range of every quantized layer of ``dit`` (a float DiT), per pass
    (``dit_pass``), over the passes run inside it; yields the ranges, filled as they run."""
    ranges: ActivationRanges = {}
    handles = []
    for key, owner, attr in _quantized_layers(dit):
        seen = ranges.setdefault(key, {})

        def record(module: nn.Module, inputs: tuple[Tensor, ...], seen=seen) -> None:
            step = current_pass()
            if step is None:
                raise RuntimeError("record_ranges needs every DiT pass inside dit_pass(step)")
            lo, hi = (float(v) for v in torch.aminmax(inputs[0].detach()))
            old = seen.get(step, (lo, hi))
            seen[step] = (min(lo, old[0]), max(hi, old[1]))

        handles.append(getattr(owner, attr).register_forward_pre_hook(record))
    try:
        yield ranges
    finally:
        for handle in handles:
            handle.remove()


def dit_pass(step: int) -> contextlib.AbstractContextManager:
    """Names the DiT pass run inside it (denoising step ``step``, ``-1`` for the KV-update
    pass) for the int8 layers' grids and for ``record_ranges``, in this thread."""
    return marked("step", step)


def current_pass() -> int | None:
    """The pass named by the innermost ``dit_pass`` in this thread, or None."""
    return mark("step")


def int8_blocks() -> contextlib.AbstractContextManager:
    """Marks the DiT passes run inside it as int8 ones (for ``int8_active``)."""
    return marked("active", True)


def int8_active() -> bool:
    """Whether the running pass is marked int8 (``int8_blocks``) in this thread."""
    return bool(mark("active"))
