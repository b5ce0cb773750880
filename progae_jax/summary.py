"""Seeing what a parameter tree holds, and what growth did to it: text and notebook displays."""

from __future__ import annotations

import dataclasses
import html

import jax
import numpy as np


def _leaves(params) -> dict[str, tuple[tuple[int, ...], str]]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[name] = (tuple(leaf.shape), str(leaf.dtype))
  return out


def _count(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class ParamTable:
  """One row per leaf: path, shape, dtype, count; `str()` is a fixed-width table."""
  rows: tuple[tuple[str, tuple[int, ...], str, int], ...]

  @property
  def total(self) -> int:
    return sum(r[3] for r in self.rows)

  def __str__(self):
    width = max([len(r[0]) for r in self.rows] + [4])
    lines = [f"{'path':<{width}}  {'shape':<18} {'dtype':<9} {'count':>11}"]
    for path, shape, dtype, count in self.rows:
      lines.append(f"{path:<{width}}  {str(shape):<18} {dtype:<9} {count:>11,}")
    lines.append(f"{'total':<{width}}  {'':<18} {'':<9} {self.total:>11,}")
    return "\n".join(lines)

  __repr__ = __str__  # A notebook cell or a REPL shows the table, not the dataclass.

  def _repr_html_(self):
    body = "".join(f"<tr><td><code>{html.escape(p)}</code></td><td>{s}</td><td>{d}</td>"
                   f"<td style='text-align:right'>{c:,}</td></tr>" for p, s, d, c in self.rows)
    return ("<table><tr><th>path</th><th>shape</th><th>dtype</th><th>count</th></tr>"
            f"{body}<tr><th>total</th><td></td><td></td><th>{self.total:,}</th></tr></table>")


def param_table(params) -> ParamTable:
  """The parameter table of any pytree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return ParamTable(tuple((p, s, d, _count(s)) for p, (s, d) in sorted(_leaves(params).items())))


@dataclasses.dataclass(frozen=True)
class GrowthDiff:
  """Which leaves two trees share (kept), which only the second has (new) and which only the
  first has (dropped), with shapes and parameter counts."""
  kept: tuple[tuple[str, tuple[int, ...]], ...]
  new: tuple[tuple[str, tuple[int, ...]], ...]
  dropped: tuple[tuple[str, tuple[int, ...]], ...]

  def count(self, kind: str) -> int:
    return sum(_count(s) for _, s in getattr(self, kind))

  def __str__(self):
    lines = []
    for kind, sign in (("kept", "="), ("new", "+"), ("dropped", "-")):
      rows = getattr(self, kind)
      lines.append(f"{kind}: {len(rows)} leaves, {self.count(kind):,} parameters")
      if kind != "kept":
        lines += [f"  {sign} {p}  {s}  ({_count(s):,})" for p, s in rows]
    return "\n".join(lines)

  __repr__ = __str__

  def _repr_html_(self):
    colours = {"kept": "#888", "new": "#2a7", "dropped": "#c33"}
    rows = "".join(
        f"<tr style='color:{colours[k]}'><td>{k}</td><td><code>{html.escape(p)}</code></td>"
        f"<td>{s}</td><td style='text-align:right'>{_count(s):,}</td></tr>"
        for k in ("new", "dropped", "kept") for p, s in getattr(self, k))
    return ("<table><tr><th></th><th>path</th><th>shape</th><th>count</th></tr>"
            f"{rows}</table>")


def growth_diff(before, after) -> GrowthDiff:
  """Compares two parameter trees leaf by leaf, by path."""
  a, b = _leaves(before), _leaves(after)
  pick = lambda names, src: tuple((n, src[n][0]) for n in sorted(names))
  return GrowthDiff(kept=pick(a.keys() & b.keys(), b), new=pick(b.keys() - a.keys(), b),
                    dropped=pick(a.keys() - b.keys(), a))
