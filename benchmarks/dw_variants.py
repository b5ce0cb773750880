"""Ways to compute a 3x3 'same' convolution's weight gradient (dw) on XLA:CPU, timed side by side.

    .venv/bin/python benchmarks/dw_variants.py                 # all variants, the model's shapes
    .venv/bin/python benchmarks/dw_variants.py default f1 hb4  # a few

XLA computes dw as a convolution whose batch is the input's channels and whose "kernel" is the
output gradient (H x W): YNNPACK runs it about 2x slower than the forward conv of equal FLOPs,
and it needs two activation-sized transposes. Every rewrite below is exact up to float
summation order (the error column), and every one was slower than XLA's own on this CPU
(2 cores, jax 0.10.2): the copies they need (pads, slices, concatenations, transposes) cost
more in XLA:CPU than the contraction saves. Kept as the record of what was tried.
"""
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import jax
import jax.numpy as jnp
from jax import lax

from abtime import interleave

DN = ("NHWC", "HWIO", "NHWC")
SHAPES = [(32, 32, 64), (32, 64, 32), (16, 64, 128), (16, 128, 64), (8, 128, 128)]  # (res, in, out)
N = 64


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def dw_default(x, g):
  """What jax.grad gives: XLA's own transposed convolution."""
  w = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
  return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]


def _patches(x):
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)


def dw_im2col(x, g):
  """Full im2col (9x the input), one dot over (n, y, x)."""
  return jnp.einsum("nhwk,nhwo->ko", _patches(x), g).reshape(3, 3, x.shape[-1], g.shape[-1])


def dw_im2col_t(x, g):
  """Full im2col built transposed (9c, m), so the dot is a plain (9c, m) @ (m, out)."""
  n, h, w, c = x.shape
  xt = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).transpose(3, 0, 1, 2)
  p = jnp.stack([xt[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)])
  return (p.reshape(9 * c, -1) @ g.reshape(-1, g.shape[-1])).reshape(3, 3, c, -1)


def dw_9dots(x, g):
  """One dot per kernel tap, on shifted slices of the padded input."""
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = [jnp.einsum("nhwc,nhwo->co", xp[:, i:i + h, j:j + w], g)
          for i in range(3) for j in range(3)]
  return jnp.stack(taps).reshape(3, 3, c, g.shape[-1])


def dw_w3(x, g):
  """im2col along W only (3x), then one dot per kernel row."""
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  xw = jnp.concatenate([xp[:, :, j:j + w] for j in range(3)], -1)
  rows = [jnp.einsum("nhwk,nhwo->ko", xw[:, i:i + h], g) for i in range(3)]
  return jnp.stack(rows).reshape(3, 3, c, g.shape[-1])


def dw_flat3(x, g):
  """W-im2col flattened: each kernel row is a contiguous row range of one 2-D matrix."""
  n, h, w, c = x.shape
  co = g.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  xw = jnp.concatenate([xp[:, :, j:j + w] for j in range(3)], -1).reshape(-1, 3 * c)
  xw = jnp.pad(xw, ((0, 2 * w), (0, 0)))
  g2 = jnp.pad(g, ((0, 0), (0, 2), (0, 0), (0, 0))).reshape(-1, co)
  rows = [xw[i * w:i * w + g2.shape[0]].T @ g2 for i in range(3)]
  return jnp.stack(rows).reshape(3, 3, c, co)


def dw_3d(x, g):
  """A dummy third spatial dim: YNNPACK takes 2-D convs only, so this one goes to Eigen."""
  x3 = x[:, :, :, None, :]
  conv3 = lambda w3: lax.conv_general_dilated(x3, w3, (1, 1, 1), [(1, 1), (1, 1), (0, 0)],
                                              dimension_numbers=("NHWDC", "HWDIO", "NHWDC"))
  w3 = jnp.zeros((3, 3, 1, x.shape[-1], g.shape[-1]), x.dtype)
  return jax.vjp(conv3, w3)[1](g[:, :, :, None, :])[0][:, :, 0]


def dw_f1(x, g):
  """XLA's formulation written by hand: x as (batch=C, feature=N), kernel g (in=N, out=O)."""
  out = lax.conv_general_dilated(x, g, (1, 1), [(1, 1), (1, 1)],
                                 dimension_numbers=("CHWN", "IHWO", "CHWN"))
  return out.transpose(1, 2, 3, 0)


def dw_f2(x, g):
  """Roles swapped: g (padded by 2) is the input, the padded x the kernel; output reversed."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = lax.conv_general_dilated(g, xp, (1, 1), [(2, 2), (2, 2)],
                                 dimension_numbers=("CHWN", "IHWO", "CHWN"))
  return out[:, ::-1, ::-1, :].transpose(1, 2, 0, 3)


def dw_hblock(x, g, bh):
  """F1 with rows split in blocks of `bh` moved into the contraction: kernel bh x W, contraction
  per tap H / bh times longer, same FLOPs."""
  n, h, w, c = x.shape
  nb = h // bh
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  xw = jnp.stack([xp[:, b * bh:b * bh + bh + 2] for b in range(nb)], axis=1)
  out = lax.conv_general_dilated(xw.reshape(n * nb, bh + 2, w + 2, c),
                                 g.reshape(n * nb, bh, w, g.shape[-1]), (1, 1), "VALID",
                                 dimension_numbers=("CHWN", "IHWO", "CHWN"))
  return out.transpose(1, 2, 3, 0)


VARIANTS = {"default": dw_default, "im2col": dw_im2col, "im2col_t": dw_im2col_t,
            "9dots": dw_9dots, "w3": dw_w3, "flat3": dw_flat3, "3d": dw_3d, "f1": dw_f1,
            "f2": dw_f2, **{f"hb{b}": functools.partial(dw_hblock, bh=b) for b in (2, 4)}}


def main(names):
  variants = {k: VARIANTS[k] for k in (names or VARIANTS)}
  variants.setdefault("default", dw_default)
  for (r, ci, co) in SHAPES:
    x = jax.random.normal(jax.random.key(0), (N, r, r, ci))
    g = jax.random.normal(jax.random.key(1), (N, r, r, co))
    ref = jax.jit(dw_default)(x, g)
    fns, errs = {}, {}
    for k, f in variants.items():
      jf = jax.jit(f)
      errs[k] = float(jnp.max(jnp.abs(jf(x, g) - ref)) / jnp.max(jnp.abs(ref)))
      fns[k] = lambda jf=jf: jf(x, g).block_until_ready()
    res = interleave(fns, rounds=5)
    print(f"res {r:2d} {ci:3d}->{co:3d}  best ms (rel. error):  " +
          "  ".join(f"{k} {v[0]:.1f} ({errs[k]:.0e})" for k, v in res.items()), flush=True)



def dw_rev(x, g):
  """XLA's formulation on spatially reversed operands (output reversed back): if XLA folds the
  reversal into the convolution's window, YNNPACK declines it and Eigen runs it."""
  out = lax.conv_general_dilated(x[:, ::-1, ::-1], g[:, ::-1, ::-1], (1, 1), [(1, 1), (1, 1)],
                                 dimension_numbers=("CHWN", "IHWO", "CHWN"))
  return out[:, ::-1, ::-1].transpose(1, 2, 3, 0)


VARIANTS["rev"] = dw_rev


def dw_chunk16(x, g, k=16):
  """XLA's formulation in blocks of <= 16 batch rows x <= 16 output channels: YNNPACK declines
  convolutions whose feature dims are all <= 16, so these run in Eigen (multi-threaded, and its
  weight-gradient kernel is faster). Blocks over the batch are summed."""
  n, co = x.shape[0], g.shape[-1]
  outs = []
  for o in range(0, co, k):
    acc = None
    for b in range(0, n, k):
      part = dw_f1(x[b:b + k], g[b:b + k, :, :, o:o + k])
      acc = part if acc is None else acc + part
    outs.append(acc)
  return jnp.concatenate(outs, axis=-1)


VARIANTS["chunk16"] = dw_chunk16
N = int(os.environ.get("DW_BATCH", N))

if __name__ == "__main__":
  main(sys.argv[1:])
