"""nnU-Net ``2d`` configurations of 3D data, as the same network with depth-1 kernels.

nnU-Net predicts a ``2d`` model slice by slice along the first (transposed) axis. The
network of the plans is built here with every 2D operation replaced by its 3D
counterpart whose kernel, stride and padding have size 1 in depth (``Conv2d(k)`` ->
``Conv3d((1, k, k))``, ``InstanceNorm2d`` -> ``InstanceNorm3d``, ...), by nnU-Net's own
``get_network_from_plans``, and the 2D weights get a depth axis of size 1. On a
``(N, C, 1, H, W)`` slice it computes exactly what the 2D network computes on
``(N, C, H, W)``, so sliding windows of depth 1, hooks and level discovery work as for
3D networks, and every feature map has the depth axis a 3D map needs.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

# 2D building blocks and their 3D counterparts (what plans name with _kw_requires_import)
_LIFT = {
    "torch.nn.modules.conv.Conv2d": "torch.nn.modules.conv.Conv3d",
    "torch.nn.Conv2d": "torch.nn.Conv3d",
    "torch.nn.modules.instancenorm.InstanceNorm2d": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "torch.nn.InstanceNorm2d": "torch.nn.InstanceNorm3d",
    "torch.nn.modules.batchnorm.BatchNorm2d": "torch.nn.modules.batchnorm.BatchNorm3d",
    "torch.nn.BatchNorm2d": "torch.nn.BatchNorm3d",
    "torch.nn.modules.dropout.Dropout2d": "torch.nn.modules.dropout.Dropout3d",
    "torch.nn.Dropout2d": "torch.nn.Dropout3d",
}
_PER_STAGE = ("kernel_sizes", "strides")


def lifted_arguments(arch_kwargs: dict[str, Any], source: str) -> dict[str, Any]:
    """The plans' 2D architecture arguments with 3D operations and depth-1 kernels and strides."""
    from medcam.models.nnunet_checkpoint import NNUNetError

    lifted = dict(arch_kwargs)
    for key, value in arch_kwargs.items():
        if isinstance(value, str) and value.endswith(("2d", "2D")):
            if value not in _LIFT:
                raise NNUNetError(f"{source}: {key} = {value!r} has no depth-1 3D counterpart medcam knows")
            lifted[key] = _LIFT[value]
    for key in _PER_STAGE:
        if key in lifted:
            lifted[key] = [
                [1, *(int(v) for v in (entry if isinstance(entry, list) else [entry] * 2))] for entry in lifted[key]
            ]
    return lifted


def _pair(entry: Any) -> list[int]:
    return [int(v) for v in entry] if isinstance(entry, (list, tuple)) else [int(entry)] * 2


def lift_weights(state: dict[str, Tensor], network: nn.Module) -> dict[str, Tensor]:
    """2D weights with a depth axis of size 1 where the lifted network's tensor has one more axis."""
    target = network.state_dict()
    out = {}
    for key, value in state.items():
        wanted = target.get(key)
        out[key] = value.unsqueeze(2) if wanted is not None and wanted.ndim == value.ndim + 1 else value
    return out


def lifted_network(configuration_manager: Any, in_channels: int, out_channels: int, source: str) -> nn.Module:
    """The ``2d`` configuration's network, built by nnU-Net's builder with depth-1 3D operations."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        lifted_arguments(configuration_manager.network_arch_init_kwargs, source),
        configuration_manager.network_arch_init_kwargs_req_import,
        in_channels,
        out_channels,
        allow_init=False,
        deep_supervision=False,
    )
