"""The measured experiments' quick modes: each script runs, and writes sane JSON and a plot.

The quick modes train a tiny model on a few hundred digits with one seed: they check the
scripts, not the answers (those are in the README, from the full modes).
"""

import json
import math
import os
import runpy
import sys

import pytest

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


def test_progressive_vs_direct(data_dir, tmp_path, monkeypatch, capsys):
  result, stdout = _run("progressive_vs_direct", data_dir, tmp_path, monkeypatch, capsys)
  s = result["summary"]
  for key in ("progressive_psnr", "direct_psnr", "direct_psnr_at_progressive_seconds"):
    _spread_ok(s[key], 0, 60)
  _spread_ok(s["progressive_seconds"], 0, 600)
  for seed in result["per_seed"]:
    assert seed["speedup"] is None or seed["speedup"] > 0
    assert seed["direct_best_psnr"] >= seed["direct_psnr"]
  # Equal images: both runs train on the progressive schedule's total, evaluated on the way.
  total = _images_in(result["configs"]["progressive"])
  assert _images_in(result["configs"]["direct"]) == total
  for label, resolutions in (("progressive", {4, 8}), ("direct", {8})):
    for curve in result["curves"][label]:
      assert {e["resolution"] for e in curve} == resolutions
      seen = [e["images_seen"] for e in curve]
      assert seen == sorted(seen) and len(seen) > 2 and seen[-1] == total
  assert "speed-up" in stdout or "in 0 of 1 seeds" in stdout


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


def test_smooth_growth(data_dir, tmp_path, monkeypatch, capsys):
  result, stdout = _run("smooth_growth", data_dir, tmp_path, monkeypatch, capsys,
                        "--variants", "before")
  assert result["variants"] == {"before": {"bias_correction": "shared"}}
  for label, s in result["summary"].items():
    _spread_ok(s["psnr"], 0, 60)
    assert s["best_psnr"]["values"][0] >= s["psnr"]["values"][0]
    assert s["worst_fade_end_drop"]["values"][0] >= 0 and s["spikes"]["values"][0] >= 0
    drift = s["device_drift"]  # The same run on 1 and on 4 devices: close, if not equal.
    assert drift["steps"] == 6 and 0 <= drift["max"] < 1e-2
    assert label in stdout
