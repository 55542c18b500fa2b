"""Choosing the torch device from a --device string, the precision it computes in, and what the CPU offers."""

import ctypes
import logging
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
            raise DeviceError(
                f"Device {spec!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("Device 'mps' was asked for, but Metal is not available on this machine.")
        return device
    raise DeviceError(f"Unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps.")


PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str, device: torch.device, cpu: tuple[str, list[str]] | None = None) -> str:
    """The precision if this device can honour it, else DeviceError: tf32 is for CUDA; bf16 for CUDA and for CPUs
    with AVX-512-BF16 or AMX (cpu: describe_cpu()'s answer, looked up when not given)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"Unknown precision {precision!r}; use {', '.join(PRECISIONS)}.")
    if precision == "fp32" or device.type == "cuda":
        return precision
    if precision == "bf16" and device.type == "cpu":
        name, extensions = cpu or describe_cpu()
        if set(extensions) & set(BF16_EXTENSIONS):
            return precision
        has = ", ".join(extensions) or "none of AVX2, AVX-512, AVX-512-BF16, AMX"
        raise DeviceError(
            f"Precision 'bf16' needs a CUDA GPU or a CPU with {' or '.join(BF16_EXTENSIONS)}; this CPU ({name}) has "
            f"{has}. Use fp32 (the default)."
        )
    raise DeviceError(
        f"Precision {precision!r} is for CUDA devices{' and CPUs with AVX-512-BF16 or AMX' if precision == 'bf16' else ''}; "
        f"on {device.type} audiofind computes in fp32 only (its embeddings match the reference there)."
    )


def _tf32_flags() -> list[tuple[object, str]]:
    """(object, attribute) of every switch that lets CUDA float32 matmuls and convolutions use TF32."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9; mixing in allow_tf32 raises there
        return [(torch.backends.cuda.matmul, "fp32_precision"), (conv, "fp32_precision")]
    return [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]  # pragma: no cover


def set_tf32(allowed: bool) -> list[object]:
    """Allow or forbid TF32 in CUDA matmuls and convolutions; returns the previous values for restore_tf32."""
    flags = _tf32_flags()
    before = [getattr(obj, name) for obj, name in flags]
    for obj, name in flags:
        setattr(obj, name, ("tf32" if allowed else "ieee") if name == "fp32_precision" else allowed)
    return before


def restore_tf32(before: list[object]) -> None:
    """Put back the TF32 switches that set_tf32 returned."""
    for (obj, name), value in zip(_tf32_flags(), before):
        setattr(obj, name, value)


@contextmanager
def precision_scope(precision: str, device: torch.device, autocast: bool = False) -> Iterator[None]:
    """Run the block at this precision: TF32 on for tf32 only (also inside bf16's float32 parts), and with
    autocast=True a bfloat16 autocast for bf16 (modules keep float32 where they disable it, as the front end does)."""
    if device.type != "cuda":
        yield
        return
    before = set_tf32(precision == "tf32")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and precision == "bf16"):
            yield
    finally:
        restore_tf32(before)


# /proc/cpuinfo flags of the vector extensions that decide CPU speed, as people name them.
CPU_EXTENSIONS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512-BF16", "amx_tile": "AMX"}
BF16_EXTENSIONS = ("AVX-512-BF16", "AMX")  # bfloat16 dot products in hardware: where bf16 can pay on a CPU


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """The CPU's model name and its vector extensions (AVX2, AVX-512, AVX-512-BF16, AMX), so figures from two
    machines are never compared blind. Linux reads /proc/cpuinfo; elsewhere the platform's name and torch's
    dispatch level (the best extension its kernels use here) stand in."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():  # the first processor's entries ("key\t: value"); the others repeat them
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = " ".join(fields.get("model name", "").split())
    flags = set(fields.get("flags", "").split())
    if not name:
        name = platform.processor() or platform.machine() or "unknown CPU"
    if flags:
        return name, [label for flag, label in CPU_EXTENSIONS.items() if flag in flags]
    capability = torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512, NEON, DEFAULT
    return name, [] if capability in ("DEFAULT", "") else [capability.replace("AVX512", "AVX-512")]


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse instead of unmapping them: eager PyTorch allocates every activation
    anew, and a 20 s clip's tensors of tens of MB each came back from the kernel as ~94,000 page faults per forward
    (~15% of it). Memory stays at the peak of the largest forward. Linux with glibc only; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and others: nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))
