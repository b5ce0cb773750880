"""Waits (up to argv[1] seconds) until other processes leave the CPU idle for 3 s; exit 1 if not."""
import sys
import time


def _sample():
  with open("/proc/stat") as f:
    v = [float(x) for x in f.readline().split()[1:]]
  return sum(v), v[3] + v[4]


deadline = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
while time.time() < deadline:
  a = _sample()
  time.sleep(3)
  b = _sample()
  busy = 1 - (b[1] - a[1]) / (b[0] - a[0])
  if busy < 0.1:
    print(f"idle ({busy:.2f})")
    sys.exit(0)
print("busy")
sys.exit(1)
