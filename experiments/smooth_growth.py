"""What makes growth smooth? The equalized learning rate tuned, and other remedies, on the main job over seeds.

    python experiments/run_parallel.py --out runs/smooth    # every run, N processes at a time
    python experiments/smooth_growth.py --variant preset --seed 1 --out RUNS   # one run
    python experiments/smooth_growth.py --collect RUNS      # result.json and the plot
    python experiments/smooth_growth.py                     # every run here, one after another
    python experiments/smooth_growth.py --quick             # digits, seconds (a smoke test)

Each variant is today's main job (`configs/main.py`: image_patches 4x4 -> 32x32, 108,800
images, Adam b2 0.99, per-leaf step counts, the last 25,600 images annealed) with changes,
evaluated every 3,200 images:

* `before`: the optimizer as it was (optax's shared step count, b2 0.999, no annealing);
* `preset`: the main job as it is;
* `eq_lr_A_B`: ProGAN's equalized learning rate with Adam at A at 4x4 and B after (the sweep);
* `fade_boost`: the new block and adapters step 3x as far as the rest during their fade;
* `long_fade`: fades of 25,600 images at 16x16 and 32x32 (the stable phases shorter by
  12,800, so the run sees as many images; annealing over the last stable phase, 12,800);
* `ema`: evaluated with an exponential moving average of the weights (decay 0.99).

Measured per run: the fade-end drop (the held-out PSNR at a fade's end below the best
evaluation of that fade), spikes (training losses above 3x the median of the 50 steps before
them, after each phase's first 1,000 images), the final held-out PSNR, the training seconds,
and (`--drift`) the 1-vs-4-device drift: the same short digits run on 1 and on 4 CPU devices,
the largest relative difference of their per-step training losses. `--collect` checks the
issue's goals per variant, picks the two best equalized-learning-rate settings on seed 0 (the
sweep) and reports them, the preset and `before` over every seed.
"""

from __future__ import annotations

import dataclasses
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
# The optimizer before the smooth-growth remedies, as a change to today's preset.
UNREMEDIED = {"adam_b2": 0.999, "anneal_images": 0}
EQ_LR_RATES = ((1e-2, 1e-3), (1e-2, 3e-3), (1e-2, 1e-2), (3e-3, 1e-2), (3e-2, 1e-2))


def _rate(x: float) -> str:
  return f"{x:.0e}".replace("e-0", "e-")


def eq_lr(rate_4: float, rate: float) -> dict:
  """The equalized learning rate, Adam at `rate_4` at 4x4 and `rate` at every later stage."""
  return {"model.equalized_lr": True, "stages.4.learning_rate": rate_4,
          "default_stage.learning_rate": rate, "stages.16.learning_rate": rate,
          "stages.32.learning_rate": rate}


# Each variant: the main preset with these `--config.KEY=VALUE` overrides.
VARIANTS = {
    "before": {**UNREMEDIED, "bias_correction": "shared"},
    "preset": {},
    **{f"eq_lr_{_rate(a)}_{_rate(b)}": eq_lr(a, b) for a, b in EQ_LR_RATES},
    "fade_boost": {"fade_lr_boost": 3.0},
    "long_fade": {"stages.16.fade_images": 25_600, "stages.16.stable_images": 6_400,
                  "stages.32.fade_images": 25_600, "stages.32.stable_images": 12_800,
                  "anneal_images": 12_800},
    "ema": {"ema_decay": 0.99},
}
# The order a launcher starts them in: what the tables need first.
# Seed 0 of each kind of compiled step comes first (a change of learning rate compiles nothing),
# so that later runs find their steps in the shared compilation cache.
PRIORITY = ["preset", "before", "eq_lr_1e-2_3e-3", "fade_boost", "ema", *VARIANTS]
# Variants whose short digits run differs (long_fade's changes are at 16x16 and 32x32 only).
DRIFT_VARIANTS = [v for v in VARIANTS if v != "long_fade"]
GOALS = {"fade_end_drop_db": 1.0, "spike_factor": 3.0, "psnr_mean_db": 21.5,
         "psnr_spread_db": 0.4, "time_over_preset": 1.10}
SPIKE_FACTOR, SPIKE_WINDOW = GOALS["spike_factor"], 50


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
                    eval_every_images=128, adam_b2=0.99, anneal_images=64).to_dict()
    # The tiny run's own schedule and model: keep only the optimizer's changes (so the eq_lr
    # variants are the preset here, and share its compiled steps).
    changes = {k: v for k, v in changes.items() if not k.startswith(("stages.", "model."))
               and "learning_rate" not in k}
  else:
    base = dict(config_files.preset("main"), eval_every_images=3_200, eval_images=256,
                checkpoint_every_images=10**9, keep_checkpoints=1, data_dir=data_dir)
  return TrainConfig.from_dict(_overridden(base, changes, base["model"]["max_resolution"]))


def fade_end_drops(run: c.Run) -> dict[str, float]:
  """Per fade: its best held-out PSNR minus the PSNR at its end (0 when the end is best)."""
  out = {}
  for r in sorted({e["resolution"] for e in run.evals if e["phase"] == "fade"}):
    fade = [e["psnr_full"] for e in run.evals if e["resolution"] == r and e["phase"] == "fade"]
    out[str(r)] = max(fade) - fade[-1]
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
  found = spikes(run)
  return {"seed": run.seed, "fade_end_drop": drops, "worst_fade_end_drop": max(drops.values()),
          "spikes": len(found), "spike_ratios": [round(s["ratio"], 2) for s in found],
          "psnr": run.final["psnr_full"], "best_psnr": max(e["psnr_full"] for e in run.evals),
          "images": run.final["images_seen"], "train_seconds": run.final["train_seconds"],
          "wall_seconds": run.wall_seconds}


# --- The 1-vs-4-device drift -------------------------------------------------------------------

# The short digits run: 150 steps, 4x4 -> 8x8, through a whole fade.
DIGITS_RUN = ["--dataset", "digits", "--max-resolution", "8", "--fade-images", "1600",
              "--stable-images", "1600", "--batch-size", "32", "--seed", "5"]


def _digits_losses(changes: dict, devices: int, workdir: str, data_dir: str | None,
                   quick: bool) -> list[float]:
  """Per-step training losses of DIGITS_RUN with `changes` on `devices` CPU devices, in a
  process of its own on the CPU (the device count is fixed when JAX starts)."""
  run = DIGITS_RUN + (["--fade-images", "64", "--stable-images", "64",  # The tests' tiny run.
                       "--config.model.channels={4: 8, 8: 8}", "--config.model.latent_dim=8"]
                      if quick else [])
  # The main job's annealing spans its last 25,600 images, more than this whole run: none.
  changes = {**changes, "anneal_images": 0}
  overrides = [f"--config.{k}={v!r}" for k, v in changes.items()
               if not (k.startswith("stages.") and int(k.split(".")[1]) > 8)]
  cmd = [sys.executable, "-m", "progae_jax", "train", *run, *overrides, "--workdir", workdir,
         "--cpu-devices", str(devices), "--restart", "--quiet", "--no-tensorboard"]
  if data_dir:
    cmd += ["--data-dir", data_dir]
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(env, JAX_PLATFORMS="cpu"))
  return [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if r["kind"] == "train"]


def device_drift(changes: dict, workdir: str, data_dir: str | None, quick: bool) -> dict:
  """The largest relative difference of the per-step losses on 1 and on 4 devices, overall
  and by step 40, 90 and the end, and the 1-device run's last loss."""
  one, four = (_digits_losses(changes, n, os.path.join(workdir, f"{n}dev"), data_dir, quick)
               for n in (1, 4))
  rel = [abs(a - b) / abs(a) for a, b in zip(one, four)]
  return {"steps": len(rel), "max": max(rel), "last_loss": one[-1],
          "by_step": {str(n): max(rel[:n]) for n in (40, 90, len(rel)) if n <= len(rel)}}


def write_drift(runs_dir: str, variant: str, drift: dict) -> str:
  path = os.path.join(runs_dir, NAME, "drift", f"{variant}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"variant": variant, "changes": VARIANTS[variant], "drift": drift,
               "command": c.command(), "machine": c.cpu_machine([1, 4]),
               "versions": c.versions(),
               "date": c.now()}, f, indent=1)
  return path


def read_drift(runs_dir: str) -> dict:
  import glob
  out = {}
  for path in sorted(glob.glob(os.path.join(runs_dir, NAME, "drift", "*.json"))):
    with open(path) as f:
      record = json.load(f)
    out[record["variant"]] = record["drift"]
  return out


# --- Jobs, for run_parallel.py ------------------------------------------------------------------

def jobs(quick: bool, seeds: int | None = None) -> list[dict]:
  """Every process of the full measurement (or the quick one's few), in the order to start
  them: seed-major, the issue's tables' variants first; the drift runs on the CPU."""
  variants = ["preset", "before", "eq_lr_1e-2_3e-3"] if quick else dict.fromkeys(PRIORITY)
  seeds = seeds or (1 if quick else 3)
  out = [{"args": ["--variant", v, "--seed", str(s)], "pool": "device", "seed": s}
         for s in range(seeds) for v in variants]
  drift = ["before"] if quick else DRIFT_VARIANTS
  return out + [{"args": ["--variant", v, "--drift"], "pool": "cpu", "seed": 0} for v in drift]


# --- Collect -------------------------------------------------------------------------------------

def summarize(label: str, runs: list[c.Run], drift: dict | None, preset_seconds) -> dict:
  measured = [measure(r) for r in runs]
  s = c.spread_over_seeds(measured)
  s["per_seed"] = measured
  s["changes"] = VARIANTS.get(label)
  s["device_drift"] = drift
  s["goals"] = goals(s, preset_seconds)
  print(f"{label:<18} {len(runs)} seed(s): final PSNR {c.fmt(s['psnr'])} dB (spread "
        f"{s['psnr']['max'] - s['psnr']['min']:.2f}); worst fade-end drop "
        f"{s['worst_fade_end_drop']['max']:.2f} dB; spikes {s['spikes']['values']}; "
        f"{c.fmt(s['train_seconds'], 0)} s" +
        (f"; 1 vs 4 devices {drift['max']:.1e}" if drift else ""), flush=True)
  return s


def goals(s: dict, preset_seconds: float | None) -> dict:
  """The issue's goals for one variant over its seeds: each met or not, with its number."""
  spread = s["psnr"]["max"] - s["psnr"]["min"]
  time_ratio = (s["train_seconds"]["mean"] / preset_seconds) if preset_seconds else None
  return {
      "seeds": len(s["psnr"]["values"]),
      "fade_end_drop_ok": s["worst_fade_end_drop"]["max"] <= GOALS["fade_end_drop_db"],
      "worst_fade_end_drop_db": s["worst_fade_end_drop"]["max"],
      "no_spikes": s["spikes"]["max"] == 0,
      "psnr_mean_ok": s["psnr"]["mean"] >= GOALS["psnr_mean_db"],
      "psnr_spread_db": spread, "psnr_spread_ok": spread <= GOALS["psnr_spread_db"],
      "time_over_preset": time_ratio,
      "time_ok": None if time_ratio is None else time_ratio <= GOALS["time_over_preset"],
  }


def best_two_of_sweep(summary: dict) -> list[str]:
  """The two equalized-learning-rate settings that did best on seed 0: smooth first (no
  fade-end drop over 1 dB, no spike), then the final held-out PSNR."""
  def seed0(label):
    m = next((m for m in summary[label]["per_seed"] if m["seed"] == 0), None)
    if m is None:
      return None
    smooth = m["worst_fade_end_drop"] <= GOALS["fade_end_drop_db"] and m["spikes"] == 0
    return (smooth, m["psnr"])
  swept = [v for v in summary if v.startswith("eq_lr_") and seed0(v) is not None]
  return sorted(swept, key=seed0, reverse=True)[:2]


def verdict(summary: dict) -> dict:
  """What to adopt: the variant with the best mean final PSNR among those with every seed
  smooth (fade ends within 1 dB, no spike) and a mean PSNR at least the preset's; else keep
  the preset. With the difference to the preset for every variant."""
  if "preset" not in summary:
    return {"adopt": None, "why": "no preset runs to compare with"}
  base = summary["preset"]["psnr"]["mean"]
  diff = {v: s["psnr"]["mean"] - base for v, s in summary.items()}
  n = summary["preset"]["goals"]["seeds"]
  fit = [v for v, s in summary.items() if v not in ("preset", "before")
         and s["goals"]["seeds"] == n and s["goals"]["fade_end_drop_ok"]
         and s["goals"]["no_spikes"] and diff[v] >= 0]
  adopt = max(fit, key=lambda v: diff[v], default=None)
  why = (f"{adopt}: every seed smooth, mean final PSNR {diff[adopt]:+.2f} dB over the preset"
         if adopt else "keep the preset: no variant had every seed smooth and kept its mean "
                       "final PSNR")
  return {"adopt": adopt, "why": why, "psnr_vs_preset_db": diff}


def plot(runs: dict[str, list[c.Run]], summary: dict, shown: list[str]):
  from progae_jax import plots
  fig, (ax, bx, cx) = plots.plt.subplots(1, 3, figsize=(16, 4.4), width_ratios=(2, 1, 1))
  for k, label in enumerate(shown):
    for j, r in enumerate(runs[label]):
      ax.plot([e["images_seen"] for e in r.evals], [e["psnr_full"] for e in r.evals],
              color=f"C{k}", lw=1, alpha=0.8, label=label if j == 0 else None)
  ax.set(xlabel="images seen", ylabel="held-out PSNR at the final resolution (dB)")
  ax.legend(fontsize=8)
  labels = list(summary)
  for k, label in enumerate(labels):
    colour = f"C{shown.index(label)}" if label in shown else "grey"
    for axis, key in ((bx, "psnr"), (cx, "worst_fade_end_drop")):
      values = summary[label][key]["values"]
      axis.plot([k] * len(values), values, "o", color=colour, ms=5)
  bx.axhline(GOALS["psnr_mean_db"], color="k", ls=":", lw=1)
  cx.axhline(GOALS["fade_end_drop_db"], color="k", ls=":", lw=1)
  for axis, name in ((bx, "final held-out PSNR (dB)"), (cx, "worst fade-end drop (dB)")):
    axis.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    axis.set(ylabel=name)
  seeds = max(len(v) for v in runs.values())
  fig.suptitle(f"Smooth growth on the main job, up to {seeds} seed(s) per variant (dotted: "
               "the issue's goals)")
  return fig


def collect(runs_dir: str, out: str) -> dict:
  """result.json and the plot from every run under `runs_dir`."""
  runs, records = c.read_runs(runs_dir, NAME)
  if not runs:
    raise SystemExit(f"--collect {runs_dir}: no runs under {os.path.join(runs_dir, NAME)}")
  drift = read_drift(runs_dir)
  order = [v for v in dict.fromkeys(PRIORITY) if v in runs] + sorted(set(runs) - set(VARIANTS))
  preset_s = (statistics.fmean(r.final["train_seconds"] for r in runs["preset"])
              if "preset" in runs else None)
  summary = {v: summarize(v, runs[v], drift.get(v), preset_s) for v in order}
  best = best_two_of_sweep(summary)
  main_table = [v for v in ("before", "preset", *best) if v in summary]
  quick = records[0].get("quick", False)
  result = {**c.provenance(runs_dir, records), "quick": quick,
            "missing": c.missing_runs(jobs(quick), runs), "goals": GOALS, "sweep_best_two_on_seed_0": best, "main_table": main_table,
            "verdict": verdict(summary), "summary": summary,
            "drift_only": {v: d for v, d in drift.items() if v not in summary},
            "config": {v: runs[v][0].config.to_dict() for v in order},
            "curves": {v: [[[e["images_seen"], e["psnr_full"]] for e in r.evals]
                           for r in runs[v]] for v in order}}
  print(f"the sweep's best two on seed 0: {', '.join(best) or '-'}; "
        f"{result['verdict']['why']}; missing runs: {', '.join(result['missing']) or 'none'}")
  c.write_collected(out, NAME, result, plot(runs, summary, main_table))
  return result


# --- Main ---------------------------------------------------------------------------------------

def _one_job(args) -> int:
  if args.drift:
    changes = VARIANTS[args.variant]
    d = device_drift(changes, os.path.join(args.workdir, args.variant, "digits"), args.data_dir,
                     args.quick)
    print(f"wrote {write_drift(args.out, args.variant, d)}: 1 vs 4 devices {d['max']:.1e}")
    return 0
  cfg = main_job(VARIANTS[args.variant], args.quick, args.data_dir)
  cfg = dataclasses.replace(cfg, seed=args.seed, deterministic=args.deterministic)
  run = c.run(cfg, os.path.join(args.workdir, args.variant, f"seed{args.seed}"), args.variant)
  c.write_run(args.out, NAME, run, changes=VARIANTS[args.variant], quick=args.quick,
              measured=measure(run))
  return 0


def main(argv=None) -> int:
  p = c.parser(__doc__, NAME, reuse=False)
  c.add_job_flags(p, VARIANTS)
  p.add_argument("--drift", action="store_true",
                 help="with --variant: the 1-vs-4-device digits runs instead of the main job")
  args = c.parse_job_args(p, argv, NAME)
  c.set_command(__file__, argv)
  if args.drift and not args.variant:
    p.error("--drift needs --variant")
  c.set_up_job(args)
  return c.dispatch(p, args, NAME, jobs, _one_job, collect)


if __name__ == "__main__":
  sys.exit(main())
