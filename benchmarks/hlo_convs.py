"""Lists every convolution in a compiled HLO text with its shapes, counting repeats: a forward
convolution that appears twice is computed twice (XLA duplicated it into two fusions).

    .venv/bin/python benchmarks/hlo_convs.py HLO.txt
(benchmarks/profile_step.py --dump-hlo PATH writes one for the real training step.)
"""
import collections
import re
import sys


def conv_signatures(hlo: str):
  shapes, comps, cur = {}, {}, None
  for line in hlo.splitlines():
    m = re.match(r'^(?:ENTRY )?%(\S+) \((.*)\) -> .*\{$', line)
    if m:
      cur = m.group(1)
      comps[cur] = []
      for p in re.finditer(r'(\S+): (\S+\[[^\]]*\](?:\{[^}]*\})?)', m.group(2)):
        shapes[p.group(1)] = p.group(2)
      continue
    if cur:
      comps[cur].append(line)
      m = re.match(r'\s*(?:ROOT )?%(\S+) = (\S+)', line)
      if m:
        shapes[m.group(1)] = m.group(2)
  sig = collections.Counter()
  for name, body in comps.items():
    for l in body:
      if ' convolution(' not in l:
        continue
      out = re.match(r'\s*(?:ROOT )?%\S+ = (\S+)', l).group(1).split('{')[0]
      a, b = re.search(r'convolution\(%(\S+), %(\S+)\)', l).groups()
      win = re.search(r'window=\{([^}]*)\}', l).group(1)
      op = re.search(r'op_name="[^"]*?/((?:encoder|decoder)/[^"]*)"', l)
      bwd = 'transpose(' in l
      sig[(f"{out} = conv({shapes.get(a, '?').split('{')[0]}, {shapes.get(b, '?').split('{')[0]}) "
           f"{win}", ("bwd " if bwd else "") + (op.group(1) if op else "?"))] += 1
  return sig


if __name__ == "__main__":
  sig = conv_signatures(open(sys.argv[1]).read())
  for (s, op), n in sorted(sig.items(), key=lambda kv: (-kv[1], kv[0][1])):
    print(f"{n}x  {s:75s} {op}")
