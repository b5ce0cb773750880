"""Interleaved timing of several callables in one process: on a shared machine a load that
comes and goes falls on all of them alike. Used by the scratch benchmarks beside it."""
import resource
import time


def _cpu():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def interleave(fns: dict, rounds=10, inner=3):
  """fns: name -> zero-argument callable that blocks until done.

  Returns name -> (best ms, median ms, highest CPU utilisation seen = CPU time / wall time).
  """
  for f in fns.values():
    f()
    f()
  ts = {k: [] for k in fns}
  us = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      c, t = _cpu(), time.perf_counter()
      for _ in range(inner):
        f()
      dt = time.perf_counter() - t
      ts[k].append(dt / inner * 1e3)
      us[k].append((_cpu() - c) / dt)
  out = {}
  for k in fns:
    s = sorted(ts[k])
    out[k] = (round(s[0], 2), round(s[len(s) // 2], 2), round(max(us[k]), 2))
  return out
