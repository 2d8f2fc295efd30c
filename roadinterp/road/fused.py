"""RoAd's element-wise tail in one pass: ``y <- y * c1 + swap_halves(y) * c2s``, in place.

Served RoAd adds, after each wrapped Linear, ``y * c1 + rotate_half(y) * c2`` with one
coefficient row per sample. Written with torch ops that is three or more passes over
``y`` (a copy that swaps the halves of every group, a multiply, a multiply-add); the
copy is a gather along the last dimension, slow on CPU. Here each pair ``(j, j + g/2)``
of a group of ``g`` is read once and written once:

    y_j <- y_j * c1_j + y_p * c2s_j        y_p <- y_p * c1_p + y_j * c2s_p

``c2s = c2 * sign`` carries ``rotate_half``'s minus sign (-1 on the first half of each
group). :func:`rotate_` uses a small C++ kernel (built once per machine with
``torch.utils.cpp_extension``, cached under ``~/.cache/torch_extensions``) for
contiguous fp32 CPU tensors when no gradient is needed, and the pure-torch
:func:`rotate_reference` otherwise (GPU, other dtypes, training, or no C++ compiler).
``ROADINTERP_FUSED=0`` forces the pure-torch path. Both give the same numbers up to
float rounding of a fused multiply-add. A build that cannot happen (no compiler, no
ninja, an unwritable cache) or that another process holds for longer than
``BUILD_WAIT_S`` (torch's build lock left behind by an interrupted build would
otherwise block forever) falls back too; :func:`status` says why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

// y: [rows, d] fp32 contiguous, rows = B * R; c1, c2s: [B, d] fp32 contiguous.
torch::Tensor rotate_(torch::Tensor y, torch::Tensor c1, torch::Tensor c2s, int64_t group) {
  const int64_t d = y.size(-1);
  const int64_t rows = y.numel() / d;
  const int64_t B = c1.size(0);
  const int64_t R = rows / B;
  const int64_t h = group / 2;
  float* yp = y.data_ptr<float>();
  const float* p1 = c1.data_ptr<float>();
  const float* p2 = c2s.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t start, int64_t end) {
    for (int64_t r = start; r < end; ++r) {
      float* row = yp + r * d;
      const float* a1 = p1 + (r / R) * d;
      const float* a2 = p2 + (r / R) * d;
      for (int64_t g0 = 0; g0 < d; g0 += group) {
        float* x = row + g0;
        float* z = row + g0 + h;
        const float* u1 = a1 + g0;
        const float* u2 = a2 + g0;
        const float* w1 = a1 + g0 + h;
        const float* w2 = a2 + g0 + h;
#pragma omp simd
        for (int64_t j = 0; j < h; ++j) {
          const float xj = x[j], zj = z[j];
          x[j] = xj * u1[j] + zj * u2[j];
          z[j] = zj * w1[j] + xj * w2[j];
        }
      }
    }
  });
  return y;
}
"""

BUILD_WAIT_S = 300.0  # how long to wait for another process's build (a fresh build took 77 s here, loaded)

_lock = threading.Lock()
_kernel = None  # None: not tried yet; False: unavailable (use the pure-torch path)
_why_not: str | None = None


def kernel():
    """The compiled op, or ``None`` when it cannot be built here (see :func:`status`)."""
    global _kernel, _why_not
    if _kernel is None:
        with _lock:
            if _kernel is None:
                if os.environ.get("ROADINTERP_FUSED", "1") == "0":
                    _kernel, _why_not = False, "disabled by ROADINTERP_FUSED=0"
                else:
                    try:
                        _kernel = _load().rotate_
                    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, unwritable cache: fall back, say why
                        _kernel, _why_not = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return _kernel or None


def built_path() -> Path:
    """Where torch's ``load_inline`` puts the built kernel (computed here: importing cpp_extension costs seconds)."""
    name = f"roadinterp_road_fused_{hashlib.sha1(_SOURCE.encode()).hexdigest()[:10]}"  # new source, new build
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    tag = "cpu" if torch.version.cuda is None else f"cu{torch.version.cuda.replace('.', '')}"
    return Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_{tag}" / name / f"{name}.so"


def _load():
    """Import the built extension directly when it exists (fast); build it otherwise (once)."""
    built = built_path()
    name = built.stem
    lock = built.parent / "lock"  # torch's FileBaton: present while some process builds
    deadline = time.monotonic() + BUILD_WAIT_S
    while lock.exists() and not built.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{lock} has existed for over {BUILD_WAIT_S:.0f} s: another process is building the "
                               "kernel, or a build was interrupted (delete the file to build again)")
        time.sleep(0.5)
    if built.exists():
        spec = importlib.util.spec_from_file_location(name, built)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    from torch.utils.cpp_extension import load_inline

    return load_inline(name, cpp_sources=_SOURCE, functions=["rotate_"],
                       extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], verbose=False)


def status() -> str:
    """``"cpp"`` when the fused kernel is in use, else why not (for benchmarks and reports)."""
    return "cpp" if kernel() is not None else f"torch fallback ({_why_not})"


def rotate_reference(y: torch.Tensor, c1: torch.Tensor, c2s: torch.Tensor, group_size: int) -> torch.Tensor:
    """Pure-torch tail, out of place: ``y * c1 + swap_halves(y) * c2s``.  # [..., d]

    The swap is a ``flip`` of a ``[..., groups, 2, g/2]`` view (a strided copy, much
    cheaper on CPU than an ``index_select`` along the last dimension).
    """
    shape = y.shape
    swapped = y.reshape(*shape[:-1], -1, 2, group_size // 2).flip(-2).reshape(shape)
    return torch.addcmul(y * c1, swapped, c2s)


def rotate_(y: torch.Tensor, c1: torch.Tensor, c2s: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rotate ``y: [B, ..., d]`` in place with per-sample rows ``c1, c2s: [B, d]`` (or ``[d]``).

    Returns ``y`` (rotated in place by the fused kernel) or a new tensor (the fallback);
    use the return value. ``y`` must not be needed afterwards.
    """
    k = kernel() if y.device.type == "cpu" else None
    rows_ok = c1.dim() == 1 or (c1.dim() == 2 and y.dim() >= 2 and y.shape[0] == c1.shape[0])
    if (
        k is not None and rows_ok and y.dtype == c1.dtype == c2s.dtype == torch.float32 and y.is_contiguous()
        and not (torch.is_grad_enabled() and (y.requires_grad or c1.requires_grad or c2s.requires_grad))
    ):
        c1r = c1.reshape(-1, y.shape[-1]).contiguous()
        return k(y, c1r, c2s.reshape(c1r.shape).contiguous(), group_size)
    if c1.dim() == 2 and y.dim() > 2:  # [B, d] -> [B, 1, ..., d] to broadcast over positions
        view = (c1.shape[0],) + (1,) * (y.dim() - 2) + (c1.shape[-1],)
        c1, c2s = c1.reshape(view), c2s.reshape(view)
    return rotate_reference(y, c1, c2s, group_size)
