"""What makes growth smooth? Remedies for the late-fade wobble, measured on the main job.

    python experiments/smooth_growth.py                        # the main job, 3 seeds each
    python experiments/smooth_growth.py --variants before,per_leaf --seeds 1
    python experiments/smooth_growth.py --quick                # digits, seconds (a smoke test)

Each variant is the main job (`configs/main.py`, image_patches 4x4 -> 32x32, 108,800 images)
with changes, evaluated every 3,200 images. Every variant starts from the main job without
the remedies its preset now has (`UNREMEDIED`: Adam's b2 0.999, no annealing) and with
per-leaf step counts (the library's default); `before` is the optimizer as it was (one
shared Adam step count), `smooth` is today's preset. Measured per run:

* fade-end drop: held-out PSNR at a fade's end below the best evaluation of that fade (dB);
* spikes: training losses more than 3x the median of the 50 steps before them, after the
  first 1,000 images of each phase;
* the final held-out PSNR and the training seconds;
* reproducibility: the same short digits run on 1 CPU device and on 4 (in two processes), the
  largest relative difference of their per-step training losses over its 150 steps.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import _common as c

from progae_jax import config_files
from progae_jax.metrics_log import read_metrics
from progae_jax.schedule import TrainConfig

NAME = "smooth_growth"
# The main job without the remedies the preset now has (with per-leaf counts, the default).
UNREMEDIED = {"adam_b2": 0.999, "anneal_images": 0}
# Each variant: UNREMEDIED and these `--config.KEY=VALUE` overrides.
# The equalized learning rate moves every layer by about lr per step relative to its unit-
# scale weights; the plain model's widest layers move ~10x that at the same lr, so its rates
# are the presets' times 10.
VARIANTS = {
    "before": {"bias_correction": "shared"},
    "per_leaf": {},
    "b2_0.99": {"adam_b2": 0.99},
    "clip": {"clip_grad_norm": 0.1},
    "smooth_ramp": {"alpha_ramp": "smooth"},
    "ema": {"ema_decay": 0.999},
    "anneal": {"anneal_images": 25_600},
    # The remedies together (per-leaf counts are today's default).
    "smooth": {"adam_b2": 0.99, "anneal_images": 25_600},
    "smooth_eq_lr": {"adam_b2": 0.99, "anneal_images": 25_600, "model.equalized_lr": True,
                     "stages.4.learning_rate": 1e-2, "default_stage.learning_rate": 3e-3,
                     "stages.16.learning_rate": 3e-3, "stages.32.learning_rate": 3e-3},
    "eq_lr": {"model.equalized_lr": True, "stages.4.learning_rate": 1e-2,
              "default_stage.learning_rate": 3e-3, "stages.16.learning_rate": 3e-3,
              "stages.32.learning_rate": 3e-3},
}
SPIKE_FACTOR, SPIKE_WINDOW = 3.0, 50


def _overridden(fields: dict, changes: dict, max_resolution: int) -> dict:
  """`fields` with a variant's overrides, leaving out stages the run does not reach."""
  fields = json.loads(json.dumps(fields))
  for key, value in changes.items():
    if not (key.startswith("stages.") and int(key.split(".")[1]) > max_resolution):
      config_files.apply_override(fields, key, repr(value))
  return fields


def main_job(changes: dict, quick: bool, data_dir: str | None) -> TrainConfig:
  """The main job with `changes`, evaluated every 3,200 images (quick: a tiny digits run)."""
  if quick:
    model, dataset, s = c.small_setting(True)
    base = c.config(model, dataset, c.budget_schedule(s["budget"] // 2, **s), data_dir,
                    eval_every_images=128).to_dict()
  else:
    base = dict(config_files.preset("main"), **UNREMEDIED, eval_every_images=3_200,
                eval_images=256, checkpoint_every_images=10**9, keep_checkpoints=1,
                data_dir=data_dir)
  max_resolution = base["model"]["max_resolution"]
  if quick:  # The tiny run's own schedule: keep only the model and optimizer changes.
    changes = {k: v for k, v in changes.items() if "learning_rate" not in k}
  return TrainConfig.from_dict(_overridden(base, changes, max_resolution))


def fade_end_drops(run: c.Run) -> dict[int, float]:
  """Per fade: its best held-out PSNR minus the PSNR at its end (0 when the end is best)."""
  out = {}
  for r in sorted({e["resolution"] for e in run.evals if e["phase"] == "fade"}):
    fade = [e["psnr_full"] for e in run.evals if e["resolution"] == r and e["phase"] == "fade"]
    out[r] = max(fade) - fade[-1]
  return out


def spikes(run: c.Run, skip_images: int = 1_000) -> list[dict]:
  """Training steps whose loss exceeds SPIKE_FACTOR x the median of the SPIKE_WINDOW steps
  before them, outside each phase's first `skip_images` images."""
  starts = {}
  for r in run.train:
    starts.setdefault((r["resolution"], r["phase"]), r["images_seen"])
  out = []
  for i in range(SPIKE_WINDOW, len(run.train)):
    r = run.train[i]
    if r["images_seen"] - starts[(r["resolution"], r["phase"])] <= skip_images:
      continue
    median = statistics.median(x["loss"] for x in run.train[i - SPIKE_WINDOW:i])
    if r["loss"] > SPIKE_FACTOR * median:
      out.append({"images_seen": r["images_seen"], "ratio": r["loss"] / median})
  return out


def measure(run: c.Run) -> dict:
  drops = fade_end_drops(run)
  return {"seed": run.seed, "fade_end_drop": drops, "worst_fade_end_drop": max(drops.values()),
          "spikes": len(spikes(run)), "psnr": run.final["psnr_full"],
          "best_psnr": max(e["psnr_full"] for e in run.evals),
          "train_seconds": run.final["train_seconds"]}


# The short digits run: 150 steps, 4x4 -> 8x8, through a whole fade.
DIGITS_RUN = ["--dataset", "digits", "--max-resolution", "8", "--fade-images", "1600",
              "--stable-images", "1600", "--batch-size", "32", "--seed", "5"]


def _digits_losses(changes: dict, devices: int, workdir: str, data_dir: str | None,
                   quick: bool) -> list[float]:
  """Per-step training losses of DIGITS_RUN with `changes` on `devices` CPU devices, in a
  process of its own (the device count is fixed when JAX starts)."""
  run = DIGITS_RUN + (["--fade-images", "64", "--stable-images", "64",  # The tests' tiny run.
                       "--config.model.channels={4: 8, 8: 8}", "--config.model.latent_dim=8"]
                      if quick else [])
  # The main job's annealing spans its last 25,600 images, more than this whole run: none.
  changes = {**UNREMEDIED, **changes, "anneal_images": 0}
  overrides = [f"--config.{k}={v!r}" for k, v in changes.items()
               if not (k.startswith("stages.") and int(k.split(".")[1]) > 8)]
  cmd = [sys.executable, "-m", "progae_jax", "train", *run, *overrides, "--workdir", workdir,
         "--cpu-devices", str(devices), "--restart", "--quiet", "--no-tensorboard"]
  if data_dir:
    cmd += ["--data-dir", data_dir]
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
  return [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if r["kind"] == "train"]


def device_drift(changes: dict, workdir: str, data_dir: str | None, quick: bool) -> dict:
  """The largest relative difference of the per-step losses on 1 and on 4 devices, overall
  and by step 40, 90 and the end."""
  one, four = (_digits_losses(changes, n, os.path.join(workdir, f"{n}dev"), data_dir, quick)
               for n in (1, 4))
  rel = [abs(a - b) / abs(a) for a, b in zip(one, four)]
  return {"steps": len(rel), "max": max(rel),
          "by_step": {n: max(rel[:n]) for n in (40, 70, 90, 100, 130, len(rel))
                      if n <= len(rel)}}


def summarize(label: str, measured: list[dict], drift: dict) -> dict:
  s = c.spread_over_seeds(measured)
  s["device_drift"] = drift
  print(f"{label:<12} final PSNR {c.fmt(s['psnr'])} dB (spread "
        f"{s['psnr']['max'] - s['psnr']['min']:.2f}); worst fade-end drop "
        f"{s['worst_fade_end_drop']['max']:.2f} dB; spikes {s['spikes']['values']}; "
        f"{c.fmt(s['train_seconds'], 0)} s; 1 vs 4 devices {drift['max']:.1e}", flush=True)
  return s


def plot(runs: dict[str, list[c.Run]], summary: dict):
  from progae_jax import plots
  fig, (ax, bx) = plots.plt.subplots(1, 2, figsize=(12, 4.2), width_ratios=(2, 1))
  for k, (label, seeded) in enumerate(runs.items()):
    for j, r in enumerate(seeded):
      ax.plot([e["images_seen"] for e in r.evals], [e["psnr_full"] for e in r.evals],
              color=f"C{k}", lw=1, alpha=0.8, label=label if j == 0 else None)
  ax.set(xlabel="images seen", ylabel="held-out PSNR at the final resolution (dB)")
  ax.legend(fontsize=8)
  labels = list(runs)
  for k, label in enumerate(labels):
    values = summary[label]["psnr"]["values"]
    bx.plot([k] * len(values), values, "o", color=f"C{k}", ms=5)
  bx.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
  bx.set(ylabel="final held-out PSNR (dB)")
  fig.suptitle(f"Remedies for the wobble, main job, {len(runs[labels[0]])} seed(s) each")
  return fig


def main(argv=None) -> int:
  p = c.parser(__doc__, NAME)
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help=f"comma-separated, of {', '.join(VARIANTS)}")
  p.add_argument("--drift-only", action="store_true",
                 help="only the 1-vs-4-device digits runs (minutes, not hours)")
  args = p.parse_args(argv)
  chosen = args.variants.split(",")
  if unknown := [v for v in chosen if v not in VARIANTS]:
    p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
  c.set_up_cpu()
  drift = {v: device_drift(VARIANTS[v], os.path.join(args.workdir, v, "digits"),
                           args.data_dir, args.quick) for v in chosen}
  if args.drift_only:
    for v in chosen:
      print(f"{v:<12} 1 vs 4 devices: {drift[v]['max']:.1e} (by step {drift[v]['by_step']})")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "drift.json"), "w") as f:
      json.dump({"command": " ".join(sys.argv), "variants": {v: VARIANTS[v] for v in chosen},
                 "drift": drift}, f, indent=1)
    return 0
  variants = {v: main_job(VARIANTS[v], args.quick, args.data_dir) for v in chosen}
  runs = c.over_seeds(variants, args.seeds, args.workdir, args.reuse)
  summary = {v: summarize(v, [measure(r) for r in runs[v]], drift[v]) for v in chosen}
  result = {"quick": args.quick, "seeds": args.seeds, "variants": {v: VARIANTS[v] for v in chosen},
            "summary": summary, "config": variants[chosen[0]].to_dict()}
  c.write(args.out, NAME, result, plot(runs, summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
