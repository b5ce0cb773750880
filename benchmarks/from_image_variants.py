"""The 1x1 image -> features adapter (contraction over 3 image channels) as a convolution
(what nn.Conv does), an einsum, or an unrolled multiply-add: forward and gradient, interleaved."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import jax, jax.numpy as jnp
from jax import lax
from abtime import interleave

def lrelu(h): return jnp.where(h >= 0, h, 0.2 * h)
def conv(x, w, b):
  return lrelu(lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b)
def einsum(x, w, b): return lrelu(jnp.einsum("nhwc,co->nhwo", x, w[0, 0]) + b)
def unrolled(x, w, b):
  k = w[0, 0]
  h = b + x[..., 0:1] * k[0]
  for c in range(1, x.shape[-1]):
    h = h + x[..., c:c + 1] * k[c]
  return lrelu(h)

for r, co in [(32, 32), (16, 64), (8, 128)]:
  x = jax.random.uniform(jax.random.key(0), (64, r, r, 3)); w = jax.random.normal(jax.random.key(1), (1, 1, 3, co)); b = jnp.zeros(co)
  g = jax.random.normal(jax.random.key(2), (64, r, r, co))
  fns = {}
  ref = None
  for name, f in [("conv", conv), ("einsum", einsum), ("unrolled", unrolled)]:
    fwd = jax.jit(f)
    bwd = jax.jit(lambda x, w, b, g, f=f: jax.vjp(lambda w, b: f(x, w, b), w, b)[1](g))
    out = bwd(x, w, b, g)
    if ref is None: ref = out
    err = max(float(jnp.max(jnp.abs(o - r_))) for o, r_ in zip(out, ref))
    fns[name + "_fwd"] = lambda fwd=fwd: fwd(x, w, b).block_until_ready()
    fns[name + "_grad"] = lambda bwd=bwd: jax.block_until_ready(bwd(x, w, b, g))
    print(name, "grad err vs conv", err)
  print((r, co), {k: v[0] for k, v in interleave(fns, rounds=6).items()}, flush=True)
