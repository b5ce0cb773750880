"""The progae_jax model in plain PyTorch: the stack a user would otherwise pick.

    python benchmarks/torch_reference.py --res 32 --batch 64 --steps 30 --alpha 0.5
    python benchmarks/torch_reference.py --mode compile_bf16 --device cuda --res 128 ...

Trains one stage on one fixed random batch and prints one JSON line: images per second over
`--steps` timed steps (after warm-up steps; on CUDA the clock reads after
`torch.cuda.synchronize()`), the device it ran on, the parameter count and its peak memory
(the device's on CUDA, the process's resident memory on the CPU). With `--worker` it stays
up: it prints a "ready" line once the step is built and warmed up (compiled, for
`compile_bf16`), then answers each line {"op": "time", "steps": N} on its standard input with
one JSON line, until {"op": "quit"}. `progae bench --vs-torch` runs it that way, one worker
per mode, beside a JAX worker of the same stage, batch, alpha, image channels, channel widths
and latent width, and reports the ratios.

Modes (`--mode`), as a PyTorch user would run the model:
    eager_fp32     eager, float32 (cuDNN's default TF32 convolutions on NVIDIA GPUs)
    eager_bf16     eager, bfloat16 autocast, channels_last memory format
    compile_bf16   eager_bf16 with the model and loss under torch.compile (forward and
                   backward; Adam, fused on CUDA, as in the eager modes)
The device (`--device`): auto (CUDA when there is one, else the CPU), cuda or cpu.

The same model as `progae_jax.ModelConfig()` (tests/test_bench.py compares the parameter
count of every stage), the same step as `progae_jax.steps.make_train_step`:

    encoder at R:  from_image_R (1x1 conv, lrelu)
                   block_r for r = R .. 8: conv3x3 C[r]->C[r], lrelu, conv3x3 C[r]->C[r/2],
                                           lrelu, 2x2 average pool
                   block_4: conv3x3 C[4]->C[4], lrelu; flatten; dense -> latent
    decoder at R:  dense latent -> 4*4*C[4], lrelu; block_4: conv3x3, lrelu
                   block_r for r = 8 .. R: nearest 2x upsample, conv3x3 C[r/2]->C[r], lrelu,
                                           conv3x3 C[r]->C[r], lrelu
                   to_image_R (1x1 conv, linear)
    fading in R:   encoder  alpha * block_R(from_image_R(x))
                              + (1 - alpha) * from_image_{R/2}(avgpool(x))
                   decoder  alpha * to_image_R(block_R(f)) + (1 - alpha) * upsample(to_image_{R/2}(f))
                   (the half-resolution adapters exist only while fading)
    loss:          mean squared error against the faded target
                   alpha * x + (1 - alpha) * upsample(avgpool(x)); Adam, learning rate 1e-3

C is 128 up to 8x8, then halves per doubling (64 at 16, 32 at 32, ...), latent width 128,
leaky ReLU slope 0.2, 'same' padding: `--ch` and `--latent` set other widths.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_RESOLUTION = 4
SLOPE = 0.2


def default_channels(resolution: int) -> int:
  """progae_jax's default width at a resolution (config.default_channels)."""
  return max(1, min(128, 1024 // resolution))


def conv3(i: int, o: int) -> nn.Conv2d:
  return nn.Conv2d(i, o, 3, 1, 1)


def lrelu() -> nn.LeakyReLU:
  return nn.LeakyReLU(SLOPE)


def halvings(top: int, bottom: int = 2 * MIN_RESOLUTION) -> list[int]:
  """top, top/2, ..., bottom."""
  out = []
  while top >= bottom:
    out.append(top)
    top //= 2
  return out


class Encoder(nn.Module):
  def __init__(self, res: int, fading: bool, image_channels: int, ch: dict, latent: int):
    super().__init__()
    self.res, self.fading = res, fading
    adapters = (res, res // 2) if fading else (res,)
    self.from_image = nn.ModuleDict(
        {str(r): nn.Sequential(nn.Conv2d(image_channels, ch[r], 1), lrelu()) for r in adapters})
    self.blocks = nn.ModuleDict({str(r): nn.Sequential(
        conv3(ch[r], ch[r]), lrelu(), conv3(ch[r], ch[r // 2]), lrelu(), nn.AvgPool2d(2))
        for r in halvings(res)})
    c4 = ch[MIN_RESOLUTION]
    self.final = nn.Sequential(conv3(c4, c4), lrelu(), nn.Flatten(),
                               nn.Linear(MIN_RESOLUTION * MIN_RESOLUTION * c4, latent))

  def forward(self, x, alpha: float):
    h = self.from_image[str(self.res)](x)
    for r in halvings(self.res):
      h = self.blocks[str(r)](h)
      if r == self.res and self.fading:
        old = self.from_image[str(r // 2)](F.avg_pool2d(x, 2))
        h = alpha * h + (1 - alpha) * old
    return self.final(h)


class Decoder(nn.Module):
  def __init__(self, res: int, fading: bool, image_channels: int, ch: dict, latent: int):
    super().__init__()
    self.res, self.fading = res, fading
    c4 = ch[MIN_RESOLUTION]
    self.first = nn.Sequential(nn.Linear(latent, MIN_RESOLUTION * MIN_RESOLUTION * c4),
                               lrelu(), nn.Unflatten(1, (c4, MIN_RESOLUTION, MIN_RESOLUTION)),
                               conv3(c4, c4), lrelu())
    self.blocks = nn.ModuleDict({str(r): nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), conv3(ch[r // 2], ch[r]), lrelu(),
        conv3(ch[r], ch[r]), lrelu()) for r in halvings(res)})
    adapters = (res, res // 2) if fading else (res,)
    self.to_image = nn.ModuleDict({str(r): nn.Conv2d(ch[r], image_channels, 1)
                                   for r in adapters})

  def forward(self, z, alpha: float):
    f = self.first(z)
    for r in reversed(halvings(self.res // 2 if self.fading else self.res)):
      f = self.blocks[str(r)](f)
    if not self.fading:
      return self.to_image[str(self.res)](f)
    new = self.to_image[str(self.res)](self.blocks[str(self.res)](f))
    old = F.interpolate(self.to_image[str(self.res // 2)](f), scale_factor=2, mode="nearest")
    return alpha * new + (1 - alpha) * old


def build(res: int, fading: bool, image_channels: int = 3, ch: dict | None = None,
          latent: int = 128) -> tuple[Encoder, Decoder]:
  """Encoder and decoder of one stage (`ch`: width per resolution, default progae_jax's)."""
  if fading and res == MIN_RESOLUTION:
    raise ValueError(f"the {MIN_RESOLUTION}x{MIN_RESOLUTION} stage cannot be fading")
  ch = {r: default_channels(r) for r in halvings(res, MIN_RESOLUTION)} | dict(ch or {})
  return (Encoder(res, fading, image_channels, ch, latent),
          Decoder(res, fading, image_channels, ch, latent))


def count_params(modules) -> int:
  return sum(p.numel() for m in modules for p in m.parameters())


def faded_target(x, alpha: float):
  if alpha >= 1.0:
    return x
  blurred = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
  return alpha * x + (1 - alpha) * blurred


def peak_rss_bytes() -> int | None:
  """This process's own peak resident memory (VmHWM; Linux), None where it cannot be read.

  Read here, not by the parent: the parent cannot read a child that has exited, and the
  child's rusage counts the pages it shared with its parent before exec.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def _channels(text: str) -> dict:
  try:
    return {int(k): int(v) for k, v in (kv.split(":") for kv in text.split(",") if kv)}
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 4:64,8:64,16:32") from None


MODES = ("eager_fp32", "eager_bf16", "compile_bf16")
DEVICES = ("auto", "cuda", "cpu")


def choose_device(requested: str, cuda_available: bool) -> str:
  """'cuda' or 'cpu': `auto` takes CUDA when there is one; asking for CUDA without one fails."""
  if requested not in DEVICES:
    raise ValueError(f"--device {requested!r}: choose from {', '.join(DEVICES)}")
  if requested == "cuda" and not cuda_available:
    raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is "
                     "False); use --device cpu or auto")
  if requested == "auto":
    return "cuda" if cuda_available else "cpu"
  return requested


def device_name(device: torch.device) -> str:
  """'cuda:0 (NVIDIA H200)' or 'cpu (N threads)': what the JSON says the step ran on."""
  if device.type == "cuda":
    return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
  return f"cpu ({torch.get_num_threads()} threads)"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--res", type=int, default=32, help="the stage's resolution (default 32)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=30, help="timed steps, after the warm-up")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
  p.add_argument("--channels", type=int, default=3, help="image channels (default 3)")
  p.add_argument("--alpha", type=float, default=0.5,
                 help="fade-in blend; 1.0 is the stable stage (default 0.5)")
  p.add_argument("--ch", type=_channels, default={},
                 help="channels per resolution, e.g. 4:64,8:64,16:32 (default progae_jax's)")
  p.add_argument("--latent", type=int, default=128, help="latent width (default 128)")
  p.add_argument("--mode", choices=MODES, default="eager_fp32",
                 help="eager_fp32 (default), eager_bf16 or compile_bf16 (see above)")
  p.add_argument("--compile", action="store_true", help="the same as --mode compile_bf16")
  p.add_argument("--device", default="auto", help="auto (default: CUDA if any), cuda or cpu")
  p.add_argument("--worker", action="store_true",
                 help="stay up and time windows asked for on standard input (see above)")
  p.add_argument("--lock", metavar="PATH",
                 help="warm up holding an exclusive lock on this file: workers started "
                      "together then warm up (and compile) one at a time")
  args = p.parse_args(argv)
  if args.compile:
    args.mode = "compile_bf16"
  return args


def make_step(a, device: torch.device):
  """The training step of the mode, on one fixed random batch: step() -> loss tensor."""
  torch.manual_seed(0)
  enc, dec = build(a.res, a.alpha < 1.0, a.channels, a.ch, a.latent)
  bf16 = a.mode != "eager_fp32"
  layout = torch.channels_last if bf16 else torch.contiguous_format
  enc, dec = (m.to(device, memory_format=layout) for m in (enc, dec))
  params = list(enc.parameters()) + list(dec.parameters())
  opt = torch.optim.Adam(params, lr=1e-3, fused=device.type == "cuda")
  x = torch.rand(a.batch, a.channels, a.res, a.res, device=device).to(memory_format=layout)
  alpha = a.alpha

  def loss_of_batch():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      return F.mse_loss(dec(enc(x, alpha), alpha).float(), faded_target(x, alpha))

  if a.mode == "compile_bf16":  # The model and loss, forward and backward (AOTAutograd);
    loss_of_batch = torch.compile(loss_of_batch)  # Adam stays the fused kernel.

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_of_batch()
    loss.backward()
    opt.step()
    return loss.detach()

  return step, count_params((enc, dec))


def timed(step, steps: int, device: torch.device) -> float:
  """Seconds for `steps` steps, the device's queue drained before and after."""
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  sync()
  t = time.perf_counter()
  for _ in range(steps):
    loss = step()
  float(loss)  # Waits for the last step on any device.
  sync()
  return time.perf_counter() - t


def peak_memory(device: torch.device) -> dict:
  out = {"max_rss_bytes": peak_rss_bytes()}
  if device.type == "cuda":
    out["device_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
  return out


def _emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


@contextlib.contextmanager
def locked(path: str | None):
  """An exclusive lock on `path` (none without one): one worker on the device at a time."""
  if path is None:
    yield
    return
  import fcntl
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def release_cache(device: torch.device) -> None:
  """Between windows a worker keeps only its tensors, not its allocator's cache: workers of
  other modes (and JAX's) compute on the same GPU meanwhile."""
  if device.type == "cuda":
    torch.cuda.empty_cache()


def serve(step, a, device: torch.device, ready: dict) -> None:
  """The worker's loop: one JSON line in, one JSON line out. On CUDA each window starts with
  one untimed step that fills the allocator's cache again, and ends by releasing it."""
  _emit(ready)
  for line in sys.stdin:
    if not line.strip():
      continue
    command = json.loads(line)
    if command.get("op") == "quit":
      return
    if command.get("op") != "time":
      _emit({"error": f"unknown op {command.get('op')!r}"})
      continue
    steps = int(command["steps"])
    if device.type == "cuda":
      timed(step, 1, device)
    seconds = timed(step, steps, device)
    release_cache(device)
    _emit({"img_per_s": steps * a.batch / seconds, "seconds": seconds, **peak_memory(device)})


def main(argv=None) -> None:
  a = parse_args(argv)
  try:
    device = torch.device(choose_device(a.device, torch.cuda.is_available()))
  except ValueError as e:
    print(f"torch_reference: error: {e}", file=sys.stderr)
    sys.exit(2)
  step, params = make_step(a, device)
  t = time.perf_counter()
  with locked(a.lock):
    timed(step, a.warmup, device)  # Warm-up: allocations, cuDNN's choices, torch.compile.
    if a.worker:
      release_cache(device)
  info = {"impl": "torch", "mode": a.mode, "device": device_name(device),
          "torch": torch.__version__, "res": a.res, "batch": a.batch, "params": params,
          "warmup_s": time.perf_counter() - t}
  if a.worker:
    serve(step, a, device, {"ready": True, **info, **peak_memory(device)})
    return
  seconds = timed(step, a.steps, device)
  _emit({**info, "img_per_s": a.steps * a.batch / seconds, **peak_memory(device)})


if __name__ == "__main__":
  main()
