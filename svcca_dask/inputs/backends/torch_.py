"""PyTorch tensors on the CPU, any float dtype: their memory, never a copy.

``bfloat16`` has no NumPy dtype: its raw bits are viewed as ``uint16`` and
widened to ``float32`` one chunk at a time (exactly); ``float16`` likewise.
"""

from __future__ import annotations

from typing import Any

from ..backend import Backend, module_of
from ..layer import BF16, Layer, Request, from_views, widened

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    name = "torch"
    accepts = "PyTorch tensors on the CPU (any float dtype; bfloat16/float16 widened per chunk)"
    extra = "torch"

    def guess_can_open(self, obj: Any) -> bool:
        return module_of(obj) == "torch" and hasattr(obj, "detach") and hasattr(obj, "device")

    def open(self, obj: Any, request: Request) -> Layer:
        import torch

        name = request.name
        if obj.device.type != "cpu":
            raise TypeError(
                f"{name} is a tensor on {obj.device}: move it to the CPU first ({name}.cpu()); "
                "the one-pass statistics are computed from host memory"
            )
        t = obj.detach()
        if t.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
        if t.dtype == torch.bfloat16:
            bits = t.view(torch.int16).numpy().view("uint16")
            data = widened(from_views(bits, kind="torch"), BF16)
        else:
            arr = t.numpy()  # shares the tensor's memory
            data = widened(from_views(arr, kind="torch"), arr.dtype)
        return Layer(data, name, "torch", f"tensor ({t.dtype})")
