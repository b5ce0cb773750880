"""Pictures for people: reconstruction grids and training curves (PNG, via matplotlib)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def image_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8) -> np.ndarray:
  """Pairs of rows, originals above their reconstructions, as one HxWxC array in [0, 1]."""
  originals = np.clip(np.asarray(originals, np.float32), 0, 1)
  reconstructions = np.clip(np.asarray(reconstructions, np.float32), 0, 1)
  n = min(len(originals), len(reconstructions))
  columns = max(1, min(columns, n))
  rows = -(-n // columns)
  _, h, w, c = originals.shape
  pad = 1
  grid = np.ones((rows * 2 * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, columns)
    x = pad + col * (w + pad)
    for k, img in enumerate((originals[i], reconstructions[i])):
      y = pad + (2 * r + k) * (h + pad)
      grid[y:y + h, x:x + w] = img
  return grid


def save_reconstructions(path: str, originals, reconstructions, *, title: str = "",
                         columns: int = 8) -> str:
  """Writes a PNG: each held-out original above its reconstruction."""
  grid = image_grid(originals, reconstructions, columns)
  scale = max(1, 256 // grid.shape[1])  # Small stages are blown up with visible pixels.
  fig_w = max(4.0, grid.shape[1] * scale / 60)
  fig, ax = plt.subplots(figsize=(fig_w, fig_w * grid.shape[0] / grid.shape[1] + 0.5))
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid[..., :3],
            cmap="gray" if grid.shape[-1] == 1 else None, vmin=0, vmax=1,
            interpolation="nearest")
  ax.set_axis_off()
  if title:
    ax.set_title(title + "  (top: original, bottom: reconstruction)", fontsize=9)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def save_curves(path: str, train: list[dict], evals: list[dict], growth_points: list[tuple]) -> str:
  """Loss and PSNR against images seen, with every phase boundary marked and labelled."""
  fig, (ax_loss, ax_psnr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
  if train:
    x = [m["images_seen"] for m in train]
    ax_loss.plot(x, [m["loss"] for m in train], lw=1, label="train loss")
    ax_psnr.plot(x, [m["psnr"] for m in train], lw=1, label="train PSNR")
  if evals:
    x = [m["images_seen"] for m in evals]
    ax_loss.plot(x, [m["mse"] for m in evals], "o-", ms=3, label="held-out MSE")
    ax_psnr.plot(x, [m["psnr"] for m in evals], "o-", ms=3, label="held-out PSNR")
  for images, label in growth_points:
    for ax in (ax_loss, ax_psnr):
      ax.axvline(images, color="grey", ls="--", lw=0.8)
    ax_loss.annotate(label, (images, 1), xycoords=("data", "axes fraction"), rotation=90,
                     va="top", ha="right", fontsize=7, color="grey")
  ax_loss.set_yscale("log")
  ax_loss.set_ylabel("MSE")
  ax_psnr.set_ylabel("PSNR (dB)")
  ax_psnr.set_xlabel("images seen")
  ax_loss.legend(fontsize=8)
  ax_psnr.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
