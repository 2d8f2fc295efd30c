"""Time the screen on SmolLM2-135M, IOI io_position (raw prompts): every layer x every prompt position.

python scripts/screen_smollm2.py OUT.json [n] [exact]
"""
import json
import sys
import time

import torch

from roadinterp.screen import screen

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
exact = sys.argv[3] if len(sys.argv) > 3 else "all"
torch.set_num_threads(2)
t = time.perf_counter()
r = screen(task="ioi", model="zoo:smollm2-135m", variables=["io_position"], template="raw", n=n, exact=exact)
r.meta["seconds"]["wall"] = round(time.perf_counter() - t, 3)
with open(out, "w") as f:
    json.dump(r.to_json(), f, indent=1, default=str)
print(json.dumps({k: r.meta[k] for k in ("seconds", "peak_rss_mb", "engine", "iia_null", "n", "positions")}))
print(json.dumps({k: v for k, v in r.meta["compare"].items() if k not in ("by_layer", "by_position")}))
