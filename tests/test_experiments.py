"""The measured experiments' quick modes: each script runs, and writes sane JSON and a plot.

The quick modes train a tiny model on a few hundred digits with one seed: they check the
scripts, not the answers (those are in the README, from the full modes).
"""

import functools
import json
import math
import os
import runpy
import sys
import tarfile
import time

import pytest
import tqdm

from progae_jax.schedule import TrainConfig, phases

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments")


def _run(name, data_dir, tmp_path, monkeypatch, capsys, *extra):
  """The script's quick mode (one seed unless `extra` says otherwise), run in this process as
  `python experiments/NAME.py --quick ...` runs it: result.json, stdout. (In this process the
  runs share their jitted steps, as one script's seeds and variants do.)"""
  out, script = str(tmp_path / "out"), os.path.join(EXPERIMENTS, f"{name}.py")
  argv = ["--quick", "--out", out, "--workdir", str(tmp_path / "runs"), "--data-dir", data_dir,
          *extra]
  monkeypatch.syspath_prepend(EXPERIMENTS)
  monkeypatch.setattr(sys, "argv", [script, *argv])
  assert runpy.run_path(script)["main"](argv) == 0
  stdout = capsys.readouterr().out
  with open(os.path.join(out, f"{name}.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(out, "result.json")) as f:
    result = json.load(f)
  assert result["quick"] is True and result["seeds"] == 1
  assert "--quick" in result["command"] and result["machine"]["platform"] == "cpu"
  return result, stdout


def _spread_ok(s, low, high):
  assert len(s["values"]) == 1 and all(low <= v <= high for v in s["values"]), s
  assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0


def _images_in(config: dict) -> int:
  """The images a run of this config trains on, from the schedule."""
  return phases(TrainConfig.from_dict(config))[-1].end


def _launch(tmp_path, *argv):
  """run_parallel.py's main in this process (its jobs are processes of their own)."""
  path = os.path.join(EXPERIMENTS, "run_parallel.py")
  return runpy.run_path(path, run_name="run_parallel")["main"]([*argv])


def test_progressive_vs_direct_runs_as_parallel_processes(data_dir, tmp_path, monkeypatch):
  # The launcher's quick mode, for real: one process per run, then collect. One at a time:
  # the second finds the first's compiled 8x8 steps in the shared cache.
  monkeypatch.syspath_prepend(EXPERIMENTS)
  out = tmp_path / "out"
  assert _launch(tmp_path, "--quick", "--out", str(out), "--data-dir", data_dir, "--scripts",
                 "progressive_vs_direct", "--parallel", "1", "--tar") == 0  # OUT/runs.tar.gz
  with open(out / "runs" / "jobs.json") as f:
    jobs = json.load(f)
  assert [j["status"] for j in jobs["jobs"]] == ["ok", "ok"] and "--quick" in jobs["command"]
  with tarfile.open(out / "runs.tar.gz") as tar:
    names = tar.getnames()
  assert {"runs/progressive_vs_direct/direct/seed0.json", "runs/jobs.json",
          "runs/progressive_vs_direct/progressive/seed0.json"} <= set(names)
  with open(out / "progressive_vs_direct" / "result.json") as f:
    result = json.load(f)
  assert result["quick"] is True and result["seeds"] == 1 and result["missing"] == []
  assert "run_parallel.py" in result["command"] and result["machine"]["platform"] == "cpu"
  assert result["versions"]["jax"] and result["date"]["first_run"] <= result["date"]["collected"]
  s = result["summary"]
  for key in ("progressive_psnr", "direct_psnr", "direct_psnr_at_progressive_seconds"):
    _spread_ok(s[key], 0, 60)
  for seed in result["per_seed"]:
    assert seed["speedup"] is None or seed["speedup"] > 0
    assert seed["direct_best_psnr"] >= seed["direct_psnr"]
  # Equal images, and the preset's optimizer on both sides (the direct run anneals too).
  progressive, direct = result["configs"]["progressive"], result["configs"]["direct"]
  assert _images_in(direct) == _images_in(progressive)
  for field in ("adam_b2", "bias_correction", "anneal_images", "ema_decay"):
    assert direct[field] == progressive[field]
  assert progressive["adam_b2"] == 0.99 and progressive["anneal_images"] > 0
  for label, resolutions in (("progressive", {4, 8}), ("direct", {8})):
    for curve in result["curves"][label]:
      assert {e["resolution"] for e in curve} == resolutions
      seen = [e["images_seen"] for e in curve]
      assert seen == sorted(seen) and len(seen) > 2 and seen[-1] == _images_in(progressive)


def test_the_launcher_runs_n_at_a_time_stops_what_overruns_and_shares_a_cache(
    tmp_path, monkeypatch, capsys):
  """The launcher's machinery with stand-in jobs (a few lines of Python each, no JAX)."""
  monkeypatch.syspath_prepend(EXPERIMENTS)
  launcher = runpy.run_path(os.path.join(EXPERIMENTS, "run_parallel.py"), run_name="rp")
  log = tmp_path / "log"
  log.mkdir()
  job = lambda name, pool="device": launcher["Job"](name, "smooth_growth", [], pool, 0)
  jobs = [job("a"), job("b"), job("slow"), job("slow2"), job("cpu", "cpu"), job("late")]
  code = ("import os, sys, time; n = sys.argv[1]; open(os.path.join(sys.argv[2], n + '.start'), "
          "'w').write(os.environ['JAX_COMPILATION_CACHE_DIR'] + ' ' + "
          "os.environ['XLA_PYTHON_CLIENT_PREALLOCATE']); time.sleep(30 if 'slow' in n else 0.3);"
          " open(os.path.join(sys.argv[2], n + '.end'), 'w').close()")
  args = launcher["parse"](["--out", str(tmp_path), "--parallel", "2", "--cpu-parallel", "1",
                            "--budget-s", "2"])
  run = launcher["Launcher"](jobs, args, launcher["child_env"]("CACHE", False), time.monotonic())
  monkeypatch.setattr(run, "_command", lambda j: [sys.executable, "-c", code, j.name, str(log)])
  with tqdm.tqdm(total=len(jobs), disable=True) as progress:
    run.run(progress)
  status = {j.name: j.status for j in jobs}
  # The slow ones were stopped when the budget ran out, and what was still waiting skipped.
  assert status == {"a": "ok", "b": "ok", "slow": "timeout", "slow2": "timeout", "cpu": "ok",
                    "late": "skipped"}, status
  assert (log / "a.start").read_text() == "CACHE false"
  # Two device jobs at a time (the slow ones waited for a and b); the CPU job ran beside them.
  first_end = min(os.path.getmtime(log / "a.end"), os.path.getmtime(log / "b.end"))
  assert os.path.getmtime(log / "slow.start") >= first_end
  assert os.path.getmtime(log / "cpu.start") < first_end
  assert not (log / "slow.end").exists() and not (log / "late.start").exists()


def test_direct_lr_pilot(data_dir, tmp_path, monkeypatch, capsys):
  result, stdout = _run("direct_lr_pilot", data_dir, tmp_path, monkeypatch, capsys)
  assert set(result["summary"]) == {"lr0.001", "lr0.0003"}
  for label, s in result["summary"].items():
    _spread_ok(s, 0, 60)
    [curve] = result["curves"][label]  # one seed
    seen = [x for x, _ in curve]
    assert seen == sorted(seen) and seen[-1] == _images_in(result["configs"][label])
    assert curve[-1][1] == s["values"][0] and f"{label}: final held-out PSNR" in stdout


def test_optimizer_at_growth(data_dir, tmp_path, monkeypatch, capsys):
  result, _ = _run("optimizer_at_growth", data_dir, tmp_path, monkeypatch, capsys)
  # --reuse reads the finished runs back instead of training them again: the same numbers.
  again, stdout = _run("optimizer_at_growth", data_dir, tmp_path, monkeypatch, capsys,
                       "--reuse")
  assert stdout.count("(read back)") == 3 and again["summary"] == result["summary"]
  assert set(result["summary"]) == {"carry", "reset", "reset_twice"}
  for policy in result["summary"].values():
    _spread_ok(policy["psnr"], 0, 60)
    _spread_ok(policy["jump_at_growth"]["8"], 0, math.inf)
    _spread_ok(policy["jump_at_fade_end"]["8"], 0, math.inf)
    _spread_ok(policy["noise_floor"], 0, math.inf)


def test_fade_length(data_dir, tmp_path, monkeypatch, capsys):
  result, _ = _run("fade_length", data_dir, tmp_path, monkeypatch, capsys)
  budget = result["images_per_growth"]
  assert sorted(map(int, result["summary"])) == [0, budget // 8, budget // 2, budget]
  for fade in result["summary"].values():
    _spread_ok(fade["psnr"], 0, 60)
    _spread_ok(fade["jump_at_growth"]["8"], 0, math.inf)


def test_seed_digits(data_dir, tmp_path, monkeypatch, capsys):
  result, stdout = _run("seed_digits", data_dir, tmp_path, monkeypatch, capsys)
  assert "resuming" in stdout  # the 8x8 stage grew from a restored 4x4 checkpoint
  for seed in result["per_seed"]:
    assert seed["kernel_shapes_unchanged"] is True
    assert all(-1 <= v <= 1 for v in seed["kernel_correlation"].values())
  for key in ("psnr_4", "psnr_8", "psnr_4_enlarged_to_8"):
    _spread_ok(result["summary"][key], 0, 60)
  # It cannot read its runs back (it needs the 4x4 state, which is not kept): no --reuse.
  with pytest.raises(SystemExit) as refused:
    runpy.run_path(os.path.join(EXPERIMENTS, "seed_digits.py"))["main"](["--reuse"])
  assert refused.value.code == 2
  assert "unrecognized arguments: --reuse" in capsys.readouterr().err


def test_smooth_growth_runs_one_process_per_variant_and_collects(data_dir, tmp_path,
                                                                  monkeypatch, capsys):
  # Each (variant, seed) as run_parallel.py starts it (here in this process), then --collect.
  script = os.path.join(EXPERIMENTS, "smooth_growth.py")
  monkeypatch.syspath_prepend(EXPERIMENTS)
  main = runpy.run_path(script)["main"]
  runs, out = str(tmp_path / "runs"), str(tmp_path / "out")
  common = ["--quick", "--out", runs, "--workdir", str(tmp_path / "work"), "--data-dir", data_dir]
  # Quick runs keep the tiny model and schedule: the three runs share their compiled steps.
  for variant in ("preset", "eq_lr_1e-2_3e-3", "eq_lr_1e-2_1e-2"):
    assert main(["--variant", variant, "--seed", "0", *common]) == 0
  assert main(["--variant", "preset", "--drift", *common]) == 0
  assert main(["--collect", runs, "--out", out]) == 0
  stdout = capsys.readouterr().out
  with open(os.path.join(out, "smooth_growth.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(out, "result.json")) as f:
    result = json.load(f)
  assert result["quick"] is True and "--collect" in result["collect_command"]
  assert result["missing"] == ["before seed 0"]  # The quick plan's run this test left out.
  assert all("--variant" in c for c in result["command"])  # No launcher: the runs' commands.
  best = result["sweep_best_two_on_seed_0"]
  assert sorted(best) == ["eq_lr_1e-2_1e-2", "eq_lr_1e-2_3e-3"]
  assert result["main_table"] == ["preset", *best]
  assert result["summary"]["eq_lr_1e-2_1e-2"]["changes"]["default_stage.learning_rate"] == 1e-2
  for label, s in result["summary"].items():
    _spread_ok(s["psnr"], 0, 60)
    [seed] = s["per_seed"]
    assert seed["best_psnr"] >= seed["psnr"] and seed["worst_fade_end_drop"] >= 0
    g = s["goals"]
    assert g["fade_end_drop_ok"] == (seed["worst_fade_end_drop"] <= 1.0)
    assert g["psnr_mean_ok"] is False and g["psnr_spread_db"] == 0 and g["seeds"] == 1
    assert label in stdout
  assert result["summary"]["preset"]["goals"]["time_over_preset"] == 1.0
  assert set(result["verdict"]["psnr_vs_preset_db"]) == set(result["summary"])
  drift = result["summary"]["preset"]["device_drift"]  # 1 vs 4 devices: close, if not equal.
  assert drift["steps"] == 6 and 0 <= drift["max"] < 1e-2
  # docs/results.md's tables render from such a file: the rows, every variant, drift.
  import render_results
  tables = {name: render_results.TABLES[name].render(result)
            for name in ("smooth_growth", "smooth_growth_sweep", "device_drift")}
  assert [row.split(" | ")[0][2:] for row in tables["smooth_growth"][2:]] == result["main_table"]
  assert len(tables["smooth_growth_sweep"]) == 2 + 3 and len(tables["device_drift"]) == 2 + 1


def test_a_run_stopped_early_records_nothing_and_collect_lists_it_missing(
    data_dir, tmp_path, monkeypatch, capsys):
  # As a job's time limit or a signal would stop it: the process says so and fails.
  from progae_jax import train
  monkeypatch.setattr(train, "train_and_evaluate",
                      functools.partial(train.train_and_evaluate, stop_after_images=64))
  monkeypatch.syspath_prepend(EXPERIMENTS)
  main = runpy.run_path(os.path.join(EXPERIMENTS, "width_growth.py"))["main"]
  runs = str(tmp_path / "runs")
  with pytest.raises(SystemExit) as stop:
    main(["--variant", "narrow", "--seed", "0", "--quick", "--out", runs,
          "--workdir", str(tmp_path / "work"), "--data-dir", data_dir])
  assert stop.value.code == 1
  assert "narrow seed 0: stopped early at 64 of 576 images" in capsys.readouterr().err
  assert not os.path.exists(os.path.join(runs, "width_growth", "narrow", "seed0.json"))


def test_width_growth_runs_one_process_per_variant_and_collects(data_dir, tmp_path,
                                                                 monkeypatch, capsys):
  # Each variant as run_parallel.py starts it (here in this process), then --collect.
  monkeypatch.syspath_prepend(EXPERIMENTS)
  main = runpy.run_path(os.path.join(EXPERIMENTS, "width_growth.py"))["main"]
  runs, out = str(tmp_path / "runs"), str(tmp_path / "out")
  common = ["--quick", "--out", runs, "--workdir", str(tmp_path / "work"), "--data-dir", data_dir]
  variants = ("narrow", "wide", "widened", "widened_fresh")
  for variant in variants:
    assert main(["--variant", variant, "--seed", "0", *common]) == 0
  assert main(["--collect", runs, "--out", out]) == 0
  stdout = capsys.readouterr().out
  with open(os.path.join(out, "width_growth.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(out, "result.json")) as f:
    result = json.load(f)
  assert result["quick"] is True and result["seeds"] == 1 and result["missing"] == []
  assert all("--variant" in c for c in result["command"])
  s, configs = result["summary"], result["configs"]
  assert set(s) == set(variants)
  for label, v in s.items():
    _spread_ok(v["psnr"], 0, 60)
    assert v["loss_jump_at_widening"]["values"][0] > 0
    assert f"{label:<14} final PSNR" in stdout
  # Equal images; the widened runs start narrow and end as wide as the wide run.
  assert len({_images_in(cfg) for cfg in configs.values()}) == 1
  assert configs["widened"]["model"] == configs["narrow"]["model"]
  assert configs["widened"]["widen"] == {"8": configs["wide"]["model"]["channels"]}
  assert configs["widened_fresh"]["optimizer_on_widening"] == "fresh"
  # The widened runs did widen (same model and seed as narrow: a run that reused narrow's
  # growth programs would end identical to it).
  assert s["widened"]["psnr"]["values"] != s["narrow"]["psnr"]["values"]
  import render_results
  assert len(render_results.TABLES["width_growth_short"].render(result)) == 2 + 4
