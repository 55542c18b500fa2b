"""Choosing the torch device from a --device string."""

import logging

import torch

from audiofind.errors import DeviceError

log = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' into a usable torch.device, or raise DeviceError."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"Unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"Device {spec!r} was asked for, but CUDA is not available on this machine.")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"Device {spec!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("Device 'mps' was asked for, but Metal is not available on this machine.")
        return device
    raise DeviceError(f"Unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps.")
