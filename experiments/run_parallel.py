"""Run the smooth-growth and progressive-vs-direct measurements as many processes, N at a time, then collect them.

    python experiments/run_parallel.py --out runs/smooth             # every run, then collect
    python experiments/run_parallel.py --out /tmp/m --runs /tmp/r --budget-s 240 --tar r.tar.gz
    python experiments/run_parallel.py --quick --out /tmp/q          # tiny runs (a smoke test)

Every job is one process (`SCRIPT --variant V --seed S --out RUNS`) writing its own JSON:

    RUNS/smooth_growth/<variant>/seed<S>.json        one main-job run
    RUNS/smooth_growth/drift/<variant>.json          its 1-vs-4-device digits runs
    RUNS/progressive_vs_direct/<side>/seed<S>.json
    RUNS/logs/<job>.txt                              each process's output
    RUNS/jobs.json                                   this command, every job's exit and time
    OUT/<script>/result.json, OUT/<script>/<script>.png  what --collect made of them
    OUT/runs.tar.gz                                  (--tar) RUNS in one file, as runs/
                                                     (--tar PATH: there instead)

RUNS is OUT/runs unless --runs says otherwise (a machine that sends back only a few files
from OUT: keep RUNS elsewhere and send the tar). Elsewhere, unpack the tar and collect:

    tar xzf runs.tar.gz -C DIR && python experiments/smooth_growth.py --collect DIR/runs

Processes share one GPU (XLA_PYTHON_CLIENT_PREALLOCATE=false: each takes the memory it uses,
not 75% of the card) and one persistent compilation cache (JAX_COMPILATION_CACHE_DIR, a fresh
temporary folder unless the environment names one), so a step compiled by one run is read
from disk by the next run of the same shapes: a change of learning rate or seed compiles
nothing. Jobs start in the scripts' order (seed 0 of every variant first), "device" jobs
`--parallel` at a time and the CPU-only drift runs `--cpu-parallel` at a time beside them,
each under `--job-timeout`; after `--budget-s` seconds no job starts and running ones are
stopped, so the command ends in time with what finished. Each script's `--collect` then
works on the runs that are there, and lists the missing ones in its result.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ("smooth_growth", "progressive_vs_direct")  # The default --scripts.
KNOWN = SCRIPTS + ("width_growth",)  # Every script that runs as jobs (`jobs()`, --collect).


@dataclasses.dataclass
class Job:
  """One process: a script with its arguments, in a pool ("device" or "cpu")."""
  name: str
  script: str
  args: list[str]
  pool: str
  seed: int
  status: str = "waiting"  # waiting, running, ok, failed, timeout, skipped
  rc: int | None = None
  wall_s: float | None = None
  proc: subprocess.Popen | None = None
  started: float = 0.0
  deadline: float = 0.0

  def report(self) -> dict:
    return {"name": self.name, "script": self.script, "args": self.args, "pool": self.pool,
            "status": self.status, "rc": self.rc, "wall_s": self.wall_s}


def plan(scripts, quick: bool, seeds: int | None = None) -> list[Job]:
  """Every script's jobs, interleaved seed by seed (seed 0 of everything first), each seed's
  direct runs first (the longest), the CPU-only jobs after the device jobs of their seed."""
  sys.path.insert(0, HERE)
  import importlib
  jobs = []
  for script in scripts:
    for order, j in enumerate(importlib.import_module(script).jobs(quick, seeds)):
      label = "-".join(a.lstrip("-") for a in j["args"])
      jobs.append((j["seed"], j["pool"] != "device", KNOWN.index(script) * -1, order,
                   Job(f"{script}.{label}", script, j["args"], j["pool"], j["seed"])))
  return [j for *_, j in sorted(jobs, key=lambda t: t[:4])]


def child_env(cache_dir: str, on_cpu: bool) -> dict:
  """The jobs' environment: one shared compilation cache, caching every compile, no GPU
  memory preallocation; on the CPU one device per process (they run side by side)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1",
             TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
  if on_cpu:
    env.setdefault("JAX_NUM_CPU_DEVICES", "1")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                    os.environ.get("PYTHONPATH")]))
  return env


class Launcher:
  """Starts jobs as slots free up, stops those past their deadline, records every one."""

  def __init__(self, jobs, args, env, t0: float):
    self.jobs, self.args, self.env, self.t0 = jobs, args, env, t0
    self.limits = {"device": args.parallel, "cpu": args.cpu_parallel}
    self.logs = os.path.join(args.runs, "logs")
    os.makedirs(self.logs, exist_ok=True)

  def _command(self, job: Job) -> list[str]:
    a = self.args
    return [sys.executable, os.path.join(HERE, f"{job.script}.py"), *job.args,
            "--out", a.runs, "--workdir", os.path.join(a.workdir, job.script),
            *(["--quick"] if a.quick else []), *(["--data-dir", a.data_dir] if a.data_dir else []),
            *(["--deterministic"] if a.deterministic and job.pool == "device" else [])]

  def _start(self, job: Job, now: float) -> None:
    log = open(os.path.join(self.logs, f"{job.name}.txt"), "w")
    job.proc = subprocess.Popen(self._command(job), stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)
    log.close()
    job.status, job.started = "running", now
    job.deadline = min(now + self.args.job_timeout, self.t0 + self.args.budget_s)

  def _check(self, job: Job, now: float) -> bool:
    """Whether `job` has ended (stopping it at its deadline)."""
    rc = job.proc.poll()
    if rc is None and now >= job.deadline:
      os.killpg(job.proc.pid, signal.SIGKILL)  # Its own session: the run and its children.
      job.proc.wait()
      job.status = "timeout"
    elif rc is None:
      return False
    else:
      job.status = "ok" if rc == 0 else "failed"
    job.rc, job.wall_s = job.proc.returncode, round(now - job.started, 1)
    return True

  def run(self, progress) -> None:
    waiting, running = list(self.jobs), []
    while waiting or running:
      now = time.monotonic()
      for job in [j for j in running if self._check(j, now)]:
        running.remove(job)
        progress.update(1)
        progress.set_postfix_str(f"{job.name}: {job.status} in {job.wall_s:.0f} s")
      if now - self.t0 >= self.args.budget_s:
        for job in waiting:
          job.status = "skipped"
        progress.update(len(waiting))
        waiting = []
      for pool, limit in self.limits.items():
        busy = sum(j.pool == pool for j in running)
        for job in [j for j in waiting if j.pool == pool][:max(0, limit - busy)]:
          self._start(job, now)
          waiting.remove(job)
          running.append(job)
      time.sleep(0.2)


def prepare_data(args, env) -> None:
  """The datasets, prepared once before the jobs start (not by eight processes at once; each
  would wait for the first to finish). A folder that is there already is taken as prepared:
  a job that finds it incomplete prepares it itself."""
  names = [n for n in ["digits"] + ([] if args.quick else ["image_patches"])
           if not (args.data_dir and os.path.isdir(os.path.join(args.data_dir, n)))]
  if not names:
    return
  code = ("import sys\nfrom progae_jax import data\n"
          "for name in sys.argv[2:]: data.prepare(name, data_dir=sys.argv[1] or None)")
  subprocess.run([sys.executable, "-c", code, args.data_dir or "", *names], env=env,
                 check=True)


def collect(args) -> dict:
  """Each script's --collect on the runs, into OUT/<script>/; returns which failed and why."""
  import importlib
  failed = {}
  for script in args.scripts:
    try:
      importlib.import_module(script).collect(args.runs, os.path.join(args.out, script))
    except (SystemExit, Exception) as e:  # One script's failure leaves the other's result.
      failed[script] = f"{type(e).__name__}: {e}"
      print(f"collect {script}: {failed[script]}", file=sys.stderr)
  return failed


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n".join(__doc__.splitlines()[1:]))
  p.add_argument("--out", required=True, help="where the results (and the tar) go")
  p.add_argument("--runs", help="where the runs' JSON and logs go (default OUT/runs)")
  p.add_argument("--quick", action="store_true", help="tiny digits runs (a smoke test)")
  p.add_argument("--scripts", default=",".join(SCRIPTS), help="comma-separated, of "
                 f"{', '.join(KNOWN)} (default {', '.join(SCRIPTS)})")
  p.add_argument("--seeds", type=int, default=None, help="seeds per variant (default 3; 1 "
                 "with --quick)")
  p.add_argument("--parallel", type=int, default=8, help="device jobs at a time (default 8)")
  p.add_argument("--cpu-parallel", type=int, default=2,
                 help="CPU-only jobs (the drift runs) at a time beside them (default 2)")
  p.add_argument("--job-timeout", type=float, default=300, help="seconds per job")
  p.add_argument("--budget-s", type=float, default=10**9, help="after this many seconds no "
                 "job starts and running ones are stopped (default: no limit)")
  p.add_argument("--data-dir", help="tfds data directory (default: tfds's own)")
  p.add_argument("--workdir", help="the runs' work directories (default: a temporary folder, "
                 "removed at the end)")
  p.add_argument("--tar", nargs="?", const="", metavar="PATH",
                 help="also pack RUNS (as runs/) into PATH (default OUT/runs.tar.gz)")
  p.add_argument("--deterministic", action="store_true",
                 help="the device jobs with deterministic GPU kernels (the same bits on a rerun)")
  p.add_argument("--dry-run", action="store_true", help="print the jobs, run nothing")
  args = p.parse_args(argv)
  args.scripts = args.scripts.split(",")
  if unknown := sorted(set(args.scripts) - set(KNOWN)):
    p.error(f"--scripts: unknown {unknown}; known: {', '.join(KNOWN)}")
  if args.parallel < 1 or args.cpu_parallel < 1:
    p.error("--parallel and --cpu-parallel: at least 1")
  args.runs = args.runs or os.path.join(args.out, "runs")
  return args


def main(argv=None) -> int:
  args = parse(argv)
  jobs = plan(args.scripts, args.quick, args.seeds)
  import _common  # On the path since plan().
  _common.set_command(__file__, argv)  # What the collected results say ran them.
  if args.dry_run:
    for j in jobs:
      print(f"{j.pool:<6} {j.script}.py {' '.join(j.args)}")
    return 0
  from tqdm import tqdm
  from progae_jax import cpu
  scratch = tempfile.mkdtemp(prefix="progae-parallel-")
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(scratch, "xla_cache")
  args.workdir = args.workdir or os.path.join(scratch, "work")
  env = child_env(cache, cpu.trains_on_cpu())
  try:
    t0 = time.monotonic()
    prepare_data(args, env)
    launcher = Launcher(jobs, args, env, t0)
    with tqdm(total=len(jobs), unit="job", desc="runs", mininterval=5) as progress:
      launcher.run(progress)
    given = sys.argv[1:] if argv is None else list(argv)
    record = {"command": " ".join([os.path.relpath(__file__), *given]),
              "seconds": round(time.monotonic() - t0, 1), "compilation_cache": cache,
              "jobs": [j.report() for j in jobs]}
    with open(os.path.join(args.runs, "jobs.json"), "w") as f:
      json.dump(record, f, indent=1)
    counts = {s: sum(j.status == s for j in jobs) for s in ("ok", "failed", "timeout", "skipped")}
    print(f"{len(jobs)} jobs in {record['seconds']:.0f} s: " +
          ", ".join(f"{n} {s}" for s, n in counts.items() if n), flush=True)
    collected = collect(args)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  if args.tar is not None:
    path = args.tar or os.path.join(args.out, "runs.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
      tar.add(args.runs, arcname="runs")
    print(f"wrote {path}")
  return 0 if counts["ok"] == len(jobs) and not collected else 1


if __name__ == "__main__":
  sys.exit(main())
