"""Training-step formulations that train.py could adopt, timed interleaved against train.py's
own `make_train_step` in one process (malloc tuned unless NO_MALLOC_TUNING=1):

- `chunks K` (K = 1, 2, 4): data parallel written with `jax.shard_map` and an explicit `psum`,
  each device's rows split into K sequential chunks whose gradients are summed (gradient
  accumulation inside one step; same loss: the mean over the global batch). No EMA, no metrics.
- MB_VARIANTS=1 adds train.py without EMA, and a GSPMD step without EMA and metrics.
- MB_GSPMD_CHUNKS=K adds train.py's step (EMA, metrics) with K strided chunks under GSPMD.

    .venv/bin/python benchmarks/microbatch.py --res 16 --cpu-devices 2 --chunks 1,2,4
Reports CPU ms/step and the best wall ms/step of each.
"""
import argparse, functools, json, os, resource, time

p = argparse.ArgumentParser()
p.add_argument("--res", type=int, default=16); p.add_argument("--batch", type=int, default=64)
p.add_argument("--alpha", type=float, default=0.5); p.add_argument("--cpu-devices", type=int, default=2)
p.add_argument("--chunks", default="1,2,4"); p.add_argument("--steps", type=int, default=4)
p.add_argument("--windows", type=int, default=5)
a = p.parse_args()
from progae_jax import bench
bench.configure_cpu(a.cpu_devices, malloc=not os.environ.get("NO_MALLOC_TUNING"))
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import PartitionSpec as P
from progae_jax import parallel, train
from progae_jax.config import ModelConfig
from progae_jax.model import apply
from progae_jax.ops import fade_target
from progae_jax.schedule import TrainConfig

cfg = TrainConfig(model=ModelConfig())
opt = train.make_optimizer(); mesh = parallel.make_mesh()
state0 = bench._state_at(cfg, a.res, a.alpha < 1, opt, mesh)
x = jax.device_put(np.random.default_rng(0).random((a.batch, a.res, a.res, 3), np.float32),
                   parallel.data_sharding(mesh))
al = jnp.float32(a.alpha)


def loss_fn(params, batch, alpha):
  recon, _ = apply(cfg.model, params, batch, alpha)
  return jnp.sum((recon - fade_target(batch, alpha)) ** 2)


def step(state, batch, alpha, k):
  n = a.batch * a.res * a.res * 3
  def local(params, batch):  # per device: its rows, in k sequential chunks
    tot, grads = 0.0, None
    for c in jnp.split(batch, k):
      l, g = jax.value_and_grad(loss_fn)(params, c, alpha)
      tot = tot + l
      grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    tot = jax.lax.psum(tot, "data") / n
    grads = jax.tree.map(lambda g: jax.lax.psum(g, "data") / n, grads)
    return tot, grads
  loss, grads = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()),
                              check_vma=False)(state["params"], batch)
  updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
  return dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt_state), loss


def cpu():
  r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

fns = {}
for k in [int(c) for c in a.chunks.split(",")]:
  f = jax.jit(functools.partial(step, k=k), donate_argnums=0)
  s = jax.tree.map(jnp.copy, state0)
  for _ in range(2):
    s, l = f(s, x, al)
  jax.block_until_ready(l)
  fns[k] = [f, s]
lead = train.make_train_step(cfg, opt, mesh)
s = jax.tree.map(jnp.copy, state0)
for _ in range(2):
  s, m = lead(s, x, al)
jax.block_until_ready(m)
fns["train.py"] = [lambda s, x, al: lead(s, x, al), s]
if os.environ.get("MB_VARIANTS"):
  cfg_noema = TrainConfig(model=ModelConfig(), ema_decay=None)
  lead2 = train.make_train_step(cfg_noema, opt, mesh)
  s2 = {k: v for k, v in jax.tree.map(jnp.copy, state0).items() if k != "ema"}
  fns["train.py-no-ema"] = [lambda s, x, al: lead2(s, x, al), s2]

  def gspmd_min(state, batch, alpha):
    def lf(p):
      return jnp.mean((apply(cfg.model, p, batch, alpha)[0] - fade_target(batch, alpha)) ** 2)
    loss, grads = jax.value_and_grad(lf)(state["params"])
    updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
    return dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt_state), loss
  rep = parallel.replicated(mesh)
  g3 = jax.jit(gspmd_min, in_shardings=(rep, parallel.data_sharding(mesh), rep),
               out_shardings=(rep, rep), donate_argnums=0)
  fns["gspmd-min"] = [g3, jax.tree.map(jnp.copy, state0)]
if os.environ.get("MB_GSPMD_CHUNKS"):
  kk = int(os.environ["MB_GSPMD_CHUNKS"])

  def gspmd_chunked(state, batch, alpha):
    """train.py's step with the loss and gradient summed over kk strided chunks of the batch
    (rows j, j + kk, ...: every chunk keeps each device's share), EMA and metrics included."""
    params = state["params"]
    n = batch.shape[0]
    chunks = batch.reshape(n // kk, kk, *batch.shape[1:])
    def lf(p, c):
      t = fade_target(c, alpha)
      return jnp.sum((apply(cfg.model, p, c, alpha)[0] - t) ** 2)
    loss, grads = 0.0, None
    for j in range(kk):
      l, g = jax.value_and_grad(lf)(params, chunks[:, j])
      loss = loss + l
      grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    size = batch.size
    loss = loss / size
    grads = jax.tree.map(lambda g: g / size, grads)
    updates, opt_state = opt.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new = dict(state, params=new_params, opt_state=opt_state, step=state["step"] + 1)
    step_f = state["step"].astype(jnp.float32)
    decay = jnp.minimum(0.99, (1.0 + step_f) / (10.0 + step_f))
    new["ema"] = optax.incremental_update(new_params, state["ema"], 1.0 - decay)
    return new, {"loss": loss, "psnr": train.psnr_from_mse(loss), "grad_norm": optax.tree.norm(grads)}
  rep = parallel.replicated(mesh)
  g4 = jax.jit(gspmd_chunked, in_shardings=(rep, parallel.data_sharding(mesh), rep),
               out_shardings=(rep, rep), donate_argnums=0)
  fns[f"train.py+chunks{kk}"] = [g4, jax.tree.map(jnp.copy, state0)]
for k in list(fns):
  if isinstance(k, str) and k != "train.py":
    for _ in range(2):
      fns[k][1], m = fns[k][0](fns[k][1], x, al)
    jax.block_until_ready(m)
res = {k: ([], []) for k in fns}
for _ in range(a.windows):
  for k, fs in fns.items():
    c, t = cpu(), time.perf_counter()
    for _ in range(a.steps):
      fs[1], l = fs[0](fs[1], x, al)
    l = jax.tree.leaves(l)[0]
    jax.block_until_ready(l)
    res[k][0].append((cpu() - c) / a.steps * 1e3); res[k][1].append((time.perf_counter() - t) / a.steps * 1e3)
for k, (cs, ws) in res.items():
  print(json.dumps({"res": a.res, "devices": a.cpu_devices, "chunks": k, "cpu_ms_min": round(min(cs), 1),
                    "wall_ms_min": round(min(ws), 1), "img_per_s_best": round(a.batch / min(ws) * 1e3, 1)}))
