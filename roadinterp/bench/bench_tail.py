"""RoAd's element-wise tail, four ways, on one thread: ``python -m roadinterp.bench.bench_tail``.

``y * c1 + swap_halves(y) * c2s`` with per-sample rows ``[16, d]`` on an up-projection
output (d = 1536, SmolLM2's FFN width, group size 64), at a decoding step ``[16, 1, d]``
and a prefill ``[16, 128, d]``:

- ``eager``: the previous RoadLinear tail (``index_select`` swap, ``mul_``, ``addcmul_``);
- ``reference``: :func:`roadinterp.road.fused.rotate_reference` (``flip`` of a grouped view);
- ``compiled``: ``torch.compile`` of the same expression (``dynamic=True``);
- ``fused``: :func:`roadinterp.road.fused.rotate_` (the C++ kernel when it builds).

Prints median microseconds per call and the one-off compile time.
"""

from __future__ import annotations

import statistics
import time

import torch

from roadinterp.road import fused
from roadinterp.road import rotation as rot


def run(d: int = 1536, batch: int = 16, group: int = 64, prefill: int = 128) -> dict:
    torch.set_num_threads(1)
    swap = rot.pair_index(d, group)
    c1, c2s = torch.rand(batch, d), torch.rand(batch, d)

    def eager(y):
        s = y.index_select(-1, swap)
        return y.mul_(c1[:, None]).addcmul_(s, c2s[:, None])

    def reference(y):
        return fused.rotate_reference(y, c1[:, None], c2s[:, None], group)

    compiled = torch.compile(lambda y, a, b: y * a + y.view(*y.shape[:-1], -1, 2, group // 2).flip(-2).reshape(y.shape) * b,
                             dynamic=True)
    t0 = time.perf_counter()
    kernel_status = fused.status()
    load_s = time.perf_counter() - t0
    out: dict = {"fused": kernel_status, "fused_load_s": load_s, "shapes": {}}
    for name, shape, n in (("decode", (batch, 1, d), 300), ("prefill", (batch, prefill, d), 30)):
        y0 = torch.randn(shape)
        want = eager(y0.clone())
        t0 = time.perf_counter()
        got = compiled(y0.clone(), c1[:, None], c2s[:, None])
        compile_s = time.perf_counter() - t0
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(fused.rotate_(y0.clone(), c1, c2s, group), want, atol=1e-5)
        fns = {"eager": eager, "reference": reference, "compiled": lambda y: compiled(y, c1[:, None], c2s[:, None]),
               "fused": lambda y: fused.rotate_(y, c1, c2s, group)}
        us = {}
        for k, fn in fns.items():
            ts = []
            for _ in range(n):
                y = y0.clone()
                t0 = time.perf_counter()
                fn(y)
                ts.append(time.perf_counter() - t0)
            us[k] = 1e6 * statistics.median(ts)
        out["shapes"][name] = {"shape": list(shape), "median_us": us, "first_compiled_call_s": compile_s}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
