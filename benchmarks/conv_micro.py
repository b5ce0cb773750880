"""One 3x3 conv of each shape in the model: forward, input gradient (dx) and weight gradient
(dw), best of 15, batch 64 (ms).

    .venv/bin/python benchmarks/conv_micro.py jax [NCHW]     # XLA_FLAGS from the environment
    .venv/bin/python benchmarks/conv_micro.py torch [cl]     # cl: channels_last
"""
import sys, time, json, os
import numpy as np

SHAPES = [(32, 32, 32), (32, 32, 64), (16, 64, 64), (16, 64, 128), (8, 128, 128), (16, 128, 64), (32, 64, 32)]
N = 64

def best(f, reps=15):
  f(); f()
  ts = []
  for _ in range(reps):
    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
  return min(ts) * 1e3

if sys.argv[1] == "jax":
  import jax, jax.numpy as jnp
  from jax import lax
  layout = sys.argv[2] if len(sys.argv) > 2 else "NHWC"
  for (r, ci, co) in SHAPES:
    if layout == "NHWC":
      x = jnp.ones((N, r, r, ci)); w = jnp.ones((3, 3, ci, co)); dn = ("NHWC", "HWIO", "NHWC")
    else:
      x = jnp.ones((N, ci, r, r)); w = jnp.ones((co, ci, 3, 3)); dn = ("NCHW", "OIHW", "NCHW")
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    y, vjp = jax.vjp(conv, x, w)
    fwd = jax.jit(conv)
    gx = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0])
    gw = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1])
    g = jnp.ones_like(y)
    res = {k: best(lambda: f(x, w, *a).block_until_ready()) for k, f, a in
           [("fwd", fwd, ()), ("dx", gx, (g,)), ("dw", gw, (g,))]}
    print(json.dumps({"impl": "jax-" + layout, "shape": [r, ci, co], **res, "flags": os.environ.get("XLA_FLAGS", "")}))
else:
  import torch
  cl = len(sys.argv) > 2 and sys.argv[2] == "cl"
  for (r, ci, co) in SHAPES:
    x = torch.ones(N, ci, r, r, requires_grad=True); conv = torch.nn.Conv2d(ci, co, 3, 1, 1)
    if cl:
      x = x.detach().to(memory_format=torch.channels_last).requires_grad_(); conv = conv.to(memory_format=torch.channels_last)
    y = conv(x); g = torch.ones_like(y)
    def fwd():
      with torch.no_grad(): conv(x)
    def bwd():
      y = conv(x); y.backward(g)
    f = best(fwd); b = best(bwd)
    print(json.dumps({"impl": "torch" + ("-cl" if cl else ""), "shape": [r, ci, co], "fwd": f, "fwd+bwd": b}))
