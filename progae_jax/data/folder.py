"""A folder of images as a dataset: prepared once into a tfds dataset, then read like the
built-ins (array_record files under `data_dir`, no TensorFlow, the same grain pipeline).

    DIR/**/*.png|jpg|jpeg|bmp|gif|tif|tiff|webp      hidden files and folders are skipped
      │ scan     relative paths, sizes, modification times: what the folder holds
      │ split    DIR/train + DIR/test (or val/, validation/): those two; else the files whose
      │          relative path hashes below 5% are held out ("test"), at least one image
      │ decode   `images.Loader` on every core, with a progress bar; what cannot be decoded
      │          is skipped and reported
      └─> data_dir/image_folder/NAME-OPTIONS-CONTENTS/1.0.0/
              array_record files + tfds metadata, report.txt, skipped.txt, contents.json

The prepared directory is named by the folder's path and the options (OPTIONS) and by what
the folder holds (CONTENTS). So a folder that changed (a file added, removed, rewritten) has
no prepared copy yet: its next use says what changed, prepares it again and then removes the
stale copy. Nothing is ever read from a copy of other contents.

The held-out split by hash is stable: a file's place depends only on its relative path, so
adding files adds them to one split or the other and moves no other file (in a folder so small
that no path hashes below 5%, the lowest hash is held out, and that one can change).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import time
from typing import Iterable, Iterator

import tensorflow_datasets as tfds

from progae_jax.data import images, storage
from progae_jax.data.errors import DataError

HELD_OUT_FRACTION = 0.05
HELD_OUT_FOLDERS = ("test", "val", "validation")  # Next to train/: the first found is "test".
_BUILDER_NAME = "image_folder"
_REPORT, _SKIPPED, _CONTENTS = "report.txt", "skipped.txt", "contents.json"
_KINDS = "PNG, JPEG, BMP, GIF, TIFF or WebP"


def is_folder(name) -> bool:
  """Whether a dataset name means a folder: an existing directory or a path (/, ~, .)."""
  if not isinstance(name, str) or not name:
    return False
  return os.path.isdir(os.path.expanduser(name)) or name.startswith(("/", "~", "."))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image file: what identifies its contents without reading it."""

  path: str  # Relative to the folder, "/"-separated.
  size: int
  mtime_ns: int


def held_out_score(path: str) -> float:
  """A fixed number in [0, 1) per relative path: below HELD_OUT_FRACTION is held out. The
  path's bytes as the file system holds them (any name, UTF-8 or not)."""
  return int(hashlib.sha1(os.fsencode(path)).hexdigest()[:15], 16) / 16**15


def readable(path: str) -> str:
  """A path as text: a name that is not UTF-8 shows its odd bytes as \\xNN escapes."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


def scan(root: str, unreadable: list | None = None) -> list[Entry]:
  """Every image file under `root` (by suffix), hidden ones skipped, sorted by path. The
  subfolders that cannot be listed are appended to `unreadable` as (relative path, why)."""
  out = []

  def cannot_list(error: OSError) -> None:
    if unreadable is not None:
      where = os.path.relpath(error.filename, root).replace(os.sep, "/")
      unreadable.append((readable(where), error.strerror or type(error).__name__))

  for here, dirs, files in os.walk(root, onerror=cannot_list):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in files:
      if name.startswith(".") or not name.lower().endswith(images.EXTENSIONS):
        continue
      full = os.path.join(here, name)
      try:
        st = os.stat(full)
      except OSError:  # A broken link or a file removed meanwhile: not part of the folder.
        continue
      out.append(Entry(os.path.relpath(full, root).replace(os.sep, "/"), st.st_size,
                       st.st_mtime_ns))
  return sorted(out, key=lambda e: e.path)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which files go to which split, before any is decoded."""

  root: str
  entries: tuple[Entry, ...]  # The files used.
  train: tuple[str, ...]
  test: tuple[str, ...]
  rule: str  # How the split was made, for the report.
  by_hash: bool
  left_out: int  # Image files outside train/ and test/ when those are the splits.
  unreadable: tuple = ()  # (relative path, why) of the subfolders that could not be listed.


def plan(root: str) -> Plan:
  unreadable = []
  entries = scan(root, unreadable)
  if not entries:
    raise DataError(f"{root} holds no image files ({_KINDS}; hidden files and folders are "
                    "skipped): put images in it, or give another folder")
  held = next((d for d in HELD_OUT_FOLDERS if os.path.isdir(os.path.join(root, d))), None)
  if held and os.path.isdir(os.path.join(root, "train")):
    train = tuple(e.path for e in entries if e.path.startswith("train/"))
    test = tuple(e.path for e in entries if e.path.startswith(f"{held}/"))
    used = tuple(e for e in entries if e.path.startswith(("train/", f"{held}/")))
    if not train or not test:
      empty = "train" if not train else held
      raise DataError(f"{root}/{empty} holds no image files ({_KINDS}): put images in it, or "
                      f"remove {root}/{held} to hold out {HELD_OUT_FRACTION:.0%} by hash")
    return Plan(root, used, train, test, f"the train/ and {held}/ subfolders", False,
                len(entries) - len(used), tuple(unreadable))
  test = tuple(e.path for e in entries if held_out_score(e.path) < HELD_OUT_FRACTION)
  train = tuple(e.path for e in entries if held_out_score(e.path) >= HELD_OUT_FRACTION)
  return Plan(root, tuple(entries), train, test,
              f"{HELD_OUT_FRACTION:.0%} held out by a hash of the relative path", True, 0,
              tuple(unreadable))


def _key(*parts) -> str:
  return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:10]


def _slug(root: str) -> str:
  return re.sub(r"[^\w\-.]", "_", os.path.basename(root))[:40].lstrip(".") or "folder"


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a folder with these options and contents is (to be) prepared."""

  family: str  # data_dir/image_folder/NAME-OPTIONS: every copy of this folder and options.
  config: str  # NAME-OPTIONS-CONTENTS

  @property
  def path(self) -> str:
    return os.path.join(os.path.dirname(self.family), self.config, str(ImageFolder.VERSION))


def target(the_plan: Plan, data_dir: str, resolution: int, channels: int) -> Target:
  options = _key(the_plan.root, resolution, channels, HELD_OUT_FRACTION)
  contents = _key([[e.path, e.size, e.mtime_ns] for e in the_plan.entries])
  family = f"{_slug(the_plan.root)}-{options}"
  return Target(os.path.join(data_dir, _BUILDER_NAME, family), f"{family}-{contents}")


def _decode_all(loader: images.Loader, root: str, paths: Iterable[str], workers: int,
                bar) -> Iterator[tuple[str, images.Decoded]]:
  """(path, decoded) in the order given, `workers` files at a time, a bounded window ahead.

  Pillow releases the GIL while it decodes and resizes, so threads use every core.
  """
  paths = iter(paths)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque(
        (p, pool.submit(loader, os.path.join(root, p)))
        for p in itertools.islice(paths, 8 * workers))
    while pending:
      path, future = pending.popleft()
      following = next(paths, None)
      if following is not None:
        pending.append((following, pool.submit(loader, os.path.join(root, following))))
      bar.update(1)
      yield path, future.result()


class _Preparation:
  """One folder being prepared: decodes its files and keeps the tally the report tells."""

  def __init__(self, the_plan: Plan, where: Target, resolution: int, channels: int):
    self.plan, self.target = the_plan, where
    self.loader = images.Loader(resolution, channels)
    self.kept = {"train": 0, "test": 0}
    self.skipped: dict[str, str] = {}
    self.upsampled = 0
    self.largest_side = 0  # Of the images read (used or too small).
    self.moved: set[str] = set()  # Train files held out because no test file was usable.
    self.start, self.bar = None, None

  def _begin(self) -> None:
    from tqdm.auto import tqdm
    from progae_jax.cpu import core_count
    self.workers = core_count()
    self.bar = tqdm(total=len(self.plan.entries), desc=f"preparing {self.plan.root}",
                    unit=" images", disable=None, leave=False, mininterval=0.5)
    self.start = time.perf_counter()

  def examples(self, split: str) -> Iterator[tuple[str, dict]]:
    """The split's usable images as tfds (key, example) pairs; "test" must run first."""
    if self.bar is None:
      self._begin()
    paths = self.plan.test if split == "test" else [
        p for p in self.plan.train if readable(p) not in self.moved]
    yield from self._keep(split, _decode_all(self.loader, self.plan.root, paths, self.workers,
                                             self.bar))
    if split == "test" and not self.kept["test"] and self.plan.by_hash:
      # At least one held-out image: the train file of lowest hash that can be decoded.
      ranked = sorted(self.plan.train, key=held_out_score)
      for path, example in self._keep("test", ((p, self.loader(
          os.path.join(self.plan.root, p))) for p in ranked)):
        self.moved.add(path)
        yield path, example
        break
    if not self.kept[split]:
      raise DataError(self._nothing_usable(split))

  def _keep(self, split, decoded) -> Iterator[tuple[str, dict]]:
    """(readable path, tfds example) of each image that decoded; the others are tallied."""
    for path, d in decoded:
      if d.image is None:
        self.skipped[readable(path)] = d.error
        self.largest_side = max(self.largest_side, d.side)
        continue
      self.skipped.pop(readable(path), None)
      self.kept[split] += 1
      self.largest_side = max(self.largest_side, d.side)
      self.upsampled += d.side < self.loader.resolution
      yield readable(path), {"image": d.image, "path": readable(path)}

  def _nothing_usable(self, split: str) -> str:
    root, r = self.plan.root, self.loader.resolution
    if split == "train" and self.kept["test"]:
      return (f"{root} has only {self.kept['test']} usable image(s), all held out: at least 2 "
              "are needed (one to train on, one held out); add images")
    if self.largest_side:  # Images were read, but all were too small.
      most = 1 << ((self.largest_side * images.MAX_UPSAMPLING).bit_length() - 1)
      return (f"every image in {root} is smaller than {r} / {images.MAX_UPSAMPLING} (the "
              f"largest side is {self.largest_side} px) and would need more than "
              f"{images.MAX_UPSAMPLING}x upsampling: choose a resolution of {most} or less "
              "(progae train: --max-resolution, at which it stores the folder; progae "
              "prepare: --data-resolution; the library: data_resolution=)")
    where = root if split == "train" or self.plan.by_hash else f"{root}'s held-out subfolder"
    return (f"no image in {where} could be used ({len(self.skipped)} skipped: "
            f"{_first_skipped(self.skipped, 3)}): add images Pillow can read")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def report(self) -> str:
    """The one paragraph that says what was prepared."""
    seconds = time.perf_counter() - self.start
    n = len(self.plan.entries)
    mode = "RGB" if self.loader.channels == 3 else "grayscale"
    r = self.loader.resolution
    text = (f"Prepared {readable(self.plan.root)}: {self.kept['train']:,} train and "
            f"{self.kept['test']:,} test images ({self.plan.rule}), {r}x{r} {mode}, from "
            f"{n:,} image files in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} files/s).")
    if self.upsampled:
      text += f" {self.upsampled:,} smaller than {r} px were upsampled (at most 2x)."
    if self.skipped:
      text += (f" Skipped {len(self.skipped):,} that could not be used: "
               f"{_first_skipped(self.skipped, 3)}; all of them are listed in "
               f"{os.path.join(self.target.path, _SKIPPED)}.")
    if self.plan.left_out:
      text += f" {self.plan.left_out:,} image files outside those subfolders were left out."
    if self.plan.unreadable:
      folders = ", ".join(f"{p} ({why})" for p, why in self.plan.unreadable[:3])
      more = len(self.plan.unreadable) - 3
      text += (f" {len(self.plan.unreadable):,} subfolder(s) could not be read and were left "
               f"out: {folders}" + (f" and {more:,} more." if more > 0 else "."))
    return text + f" Stored in {self.target.path}."

  def write(self, directory: str) -> None:
    """report.txt, skipped.txt and contents.json, next to the prepared data."""
    with open(os.path.join(directory, _REPORT), "w") as f:
      f.write(self.report() + "\n")
    with open(os.path.join(directory, _SKIPPED), "w") as f:
      f.writelines(f"{path}\t{why}\n" for path, why in sorted(self.skipped.items()))
    with open(os.path.join(directory, _CONTENTS), "w") as f:
      json.dump({"root": self.plan.root, "resolution": self.loader.resolution,
                 "channels": self.loader.channels,
                 "files": [[e.path, e.size, e.mtime_ns] for e in self.plan.entries]}, f)


def _first_skipped(skipped: dict[str, str], count: int) -> str:
  shown = [f"{path} ({why})" for path, why in sorted(skipped.items())[:count]]
  more = len(skipped) - len(shown)
  return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


class ImageFolder(storage.LocalBuilder, skip_registration=True):
  """A folder of images at one resolution and channel count: 'train' and 'test' splits of
  uint8 'image' (R, R, C) and the file's relative 'path'. One config per folder contents."""

  name = _BUILDER_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Centre square, Lanczos to R, RGB or grey, alpha on black."}

  def __init__(self, *, preparation: _Preparation, **kwargs):
    self._prep = preparation
    super().__init__(**kwargs)

  def _info(self):
    r, c = self._prep.loader.resolution, self._prep.loader.channels
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"The images of {self._prep.plan.root}, {self._prep.plan.rule}.",
        features=tfds.features.FeaturesDict({
            "image": storage.image_feature((r, r, c)), "path": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # Unused: the images are on disk.
    # "test" first: if none of its files decodes, it takes one from "train".
    return {split: self._generate_examples(split) for split in ("test", "train")}

  def _generate_examples(self, split):
    return self._prep.examples(split)

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    self._prep.write(os.fspath(self.data_dir))  # Still the incomplete.* directory here.


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A folder's prepared copy."""

  path: str  # data_dir/image_folder/NAME-OPTIONS-CONTENTS/1.0.0
  report: str
  fresh: bool  # Prepared by this call (else found prepared).


def prepare(name: str, data_dir: str, resolution: int, channels: int) -> Prepared:
  """Prepares the folder `name` in `data_dir` (a resolved path) unless its contents with these
  options are there already; says what changed and removes the stale copy when it prepares."""
  root = _root(name)
  _check_options(root, resolution, channels)
  the_plan = plan(root)
  where = target(the_plan, data_dir, resolution, channels)
  prep = _Preparation(the_plan, where, resolution, channels)

  def make_builder():
    with storage.absl_errors_only():  # Not "Using custom data configuration": it is ours.
      return ImageFolder(preparation=prep, config=tfds.core.BuilderConfig(name=where.config),
                         data_dir=data_dir, file_format="array_record")

  def build(builder):
    stale = _stale_copies(where)
    if stale:
      print(f"{root} changed since it was prepared ({_changes(stale[-1], the_plan)}): "
            "preparing it again", flush=True)
    try:
      storage.quiet_prepare(builder)
    finally:
      prep.close()
    for path in stale:
      shutil.rmtree(path, ignore_errors=True)

  _, fresh = storage.prepare_once(make_builder, where.family + ".lock", build)
  with open(os.path.join(where.path, _REPORT)) as f:
    return Prepared(where.path, f.read().strip(), fresh)


def _root(name: str) -> str:
  root = os.path.abspath(os.path.expanduser(name))
  if not os.path.exists(root):
    raise DataError(f"{root} does not exist: give a folder of images ({_KINDS}), a built-in "
                    "dataset or a tfds dataset's name")
  if not os.path.isdir(root):
    raise DataError(f"{root} is a file, not a folder: give the folder that holds the images")
  return root


def _check_options(root: str, resolution, channels) -> None:
  power = isinstance(resolution, int) and not isinstance(resolution, bool) and (
      resolution >= 4 and resolution & (resolution - 1) == 0)
  if not power:
    raise DataError(f"resolution {resolution!r} for the images of {root} is not a power of two "
                    "(4, 8, ..., 64, 128, ...): choose one (--data-resolution, data_resolution=)")
  if channels not in images.CHANNELS or isinstance(channels, bool):
    raise DataError(f"channels {channels!r} for the images of {root} must be 1 (grayscale) or "
                    "3 (RGB) (--image-channels, channels=)")


def _stale_copies(where: Target) -> list[str]:
  """The prepared copies of the same folder and options with other contents, oldest first."""
  parent = os.path.dirname(where.family)
  if not os.path.isdir(parent):
    return []
  prefix = os.path.basename(where.family) + "-"
  copies = [os.path.join(parent, d) for d in os.listdir(parent)
            if d.startswith(prefix) and d != where.config]
  return sorted((c for c in copies if os.path.isdir(c)), key=os.path.getmtime)


def _changes(stale: str, the_plan: Plan) -> str:
  """'3 added, 1 removed, 2 modified' between a stale copy and the folder now."""
  try:
    before = contents(os.path.join(stale, str(ImageFolder.VERSION)))
  except (OSError, ValueError, KeyError):
    return "its earlier contents are unknown"
  return changes(before, [[e.path, e.size, e.mtime_ns] for e in the_plan.entries])


def contents(prepared: str) -> list:
  """The files a prepared copy was made from: [relative path, size, mtime_ns] each."""
  with open(os.path.join(prepared, _CONTENTS)) as f:
    return json.load(f)["files"]


def changes(before_files: list, now_files: list) -> str:
  """'3 added, 1 removed, 2 modified' from one `contents` listing to another."""
  before = {p: (size, mtime) for p, size, mtime in before_files}
  now = {p: (size, mtime) for p, size, mtime in now_files}
  added = len(now.keys() - before.keys())
  removed = len(before.keys() - now.keys())
  modified = sum(before[p] != now[p] for p in now.keys() & before.keys())
  return f"{added:,} added, {removed:,} removed, {modified:,} modified"
