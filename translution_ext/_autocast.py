"""Under torch.autocast the native ops run in the autocast dtype, like a matmul would."""
from __future__ import annotations

from typing import List, Optional

import torch


def autocast_inputs(device_type: str, *tensors: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """The floating-point tensors cast to the autocast dtype when autocast is on for the device."""
    if not torch.is_autocast_enabled(device_type):
        return list(tensors)
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]
