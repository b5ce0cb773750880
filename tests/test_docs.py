"""The README, docs/ and benchmarks/ say what runs: every command in them is read and tried.

Mechanical, so that a page and the code cannot drift apart unnoticed:

* every command of every shell block (indented, or fenced as sh, bash, shell or console; only
  the `$ ` lines when a block has prompts) is checked, each line split at `&&`, `||`, `;` and
  `|`. One that runs `progae`, `python -m progae_jax...`, `python experiments/...`,
  `python benchmarks/...` or `make` is parsed by the program's own argparse parser, exactly
  as written (argparse's parse_args is intercepted, so nothing long runs); a script with no
  parser runs for real; a `make` target must exist in the Makefile. Any other command must
  be a tool of KNOWN_TOOLS or an executable file of the repository (`experiments/gpu_check.sh`,
  reading every variable set in front of it), `pip` extras must be in setup.cfg, `python -m`
  modules must exist, and files of the repository it names must be there (`cp`'s source
  too). A fenced block names its language (`text` for output and pictures), so none is
  skipped unseen;
* commands in inline code (`progae train --restart`) are often fragments: their subcommand
  and every --flag must exist;
* the Python blocks of the pages in RUN_PYTHON_OF run as written, each page's blocks in order
  in one namespace, in a fresh directory; a block that trains gets a tiny model, a few images
  and a stop after 4x4 (`train.train_and_evaluate` shrinks the config it is given). Every
  page's Python blocks must compile and name only what progae_jax has;
* names in inline code (`steps.make_train_step`, `progae_jax/growth.py`, `show_growth.py`)
  exist in the code;
* the growth printout in the README is the real output of experiments/show_growth.py;
* links and pictures resolve inside the repository (anchors included), nothing refers to
  files outside it, and the README stays a front page (under 17 KB).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import glob
import importlib
import io
import itertools
import os
import re
import runpy
import shlex
import sys
from unittest import mock

import pytest
from markdown_it import MarkdownIt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for folder in ("docs", "benchmarks")
                               for p in glob.glob(os.path.join(REPO, folder, "*.md")))
# Pages whose ```python blocks are executed (the others are compiled and name-checked).
RUN_PYTHON_OF = ["README.md"]
README_LIMIT_BYTES = 17_000  # A front page: details go in docs/
# Where a bare file name in a page (`growth.py`, `show_growth.py`) may live.
SOURCE_DIRS = ("progae_jax", "progae_jax/configs", "experiments", "benchmarks", "tests", ".")


# ---------------------------------------------------------------------------------------------
# Reading the pages


@functools.cache
def tokens(page: str) -> list:
  with open(os.path.join(REPO, page), encoding="utf-8") as f:
    return MarkdownIt("commonmark").enable("table").parse(f.read())


def code_blocks(page: str) -> list[tuple[str, str, int]]:
  """(language, text, first line) of every fenced or indented code block."""
  return [(t.info.strip() if t.type == "fence" else "", t.content, t.map[0] + 1)
          for t in tokens(page) if t.type in ("fence", "code_block")]


def inline(page: str, kind: str) -> list:
  return [c for t in tokens(page) if t.type == "inline" for c in t.children if c.type == kind]


SHELL_LANGUAGES = ("bash", "sh", "shell", "console")


def shell_blocks(page: str) -> list[tuple[str, int, bool]]:
  """(text, first line, prompted) of every shell block: indented code blocks and fences in a
  SHELL_LANGUAGE. In a `console` block, or any with `$ ` lines, only those are commands (the
  other lines are what they print)."""
  return [(t.content, t.map[0] + 1, t.info.strip() == "console" or
           any(line.startswith("$ ") for line in t.content.splitlines()))
          for t in tokens(page) if t.type == "code_block"
          or (t.type == "fence" and t.info.strip() in SHELL_LANGUAGES)]


def command_lines(text: str, prompted: bool = False) -> list[str]:
  """The command lines of one shell block (continuations joined, blank lines and comment
  lines dropped): in a prompted block the `$ ` lines only."""
  lines = text.replace("\\\n", " ").splitlines()
  if prompted:
    return [line[2:] for line in lines if line.startswith("$ ")]
  return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def segments(line: str) -> list[str]:
  """The commands of one shell line, split at `&&`, `||`, `;` and `|` (quotes respected;
  comments dropped), each as text."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
  lexer.whitespace_split, out, words = True, [], []
  try:
    for word in lexer:
      if word in ("&&", "||", ";", "|", "&"):
        out.append(words)
        words = []
      else:
        words.append(word)
  except ValueError:  # An unclosed quote: the line as one command, for the check to refuse.
    return [line]
  return [shlex.join(w) for w in out + [words] if w]


def shell_commands() -> list[tuple[str, int, str]]:
  """(page, line, command) for every command of every shell line of every page."""
  found = []
  for page in PAGES:
    for text, first, prompted in shell_blocks(page):
      for i, line in enumerate(command_lines(text, prompted)):
        found += [(page, first + i, command) for command in segments(line)]
  return found


def _words(line: str) -> list[str]:
  """The words of a command: comments, `&`, `VAR=value` and `time` in front dropped."""
  try:
    words = shlex.split(line, comments=True)
  except ValueError:
    return []
  while words and (re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]) or words[0] == "time"):
    words = words[1:]
  return [w for w in words if w != "&"]


@dataclasses.dataclass(frozen=True)
class Command:
  page: str
  line: int
  text: str
  kind: str        # "progae", "module", "script", "make"
  target: str      # module name, script path or make target
  argv: tuple

  def __str__(self):
    return f"{self.page}:{self.line}: {self.text.strip()}"


def as_command(page: str, line: int, text: str) -> Command | None:
  words = _words(text)
  if not words:
    return None
  program, rest = words[0], words[1:]
  if program == "progae" or program.endswith("/progae"):
    return Command(page, line, text, "progae", "progae_jax.cli", tuple(rest))
  if program == "make":
    return Command(page, line, text, "make", rest[0] if rest else "", ())
  if not re.fullmatch(r"(.*/)?python3?", program) or not rest:
    return None
  if rest[0] == "-m" and len(rest) > 1 and rest[1].startswith("progae_jax"):
    return Command(page, line, text, "module", rest[1], tuple(rest[2:]))
  if re.match(r"(experiments|benchmarks)/.*\.py$", rest[0]):
    return Command(page, line, text, "script", rest[0], tuple(rest[1:]))
  return None


def block_commands() -> list[Command]:
  """The commands that run progae, a module of progae_jax, a script of experiments/ or
  benchmarks/, or make: each is parsed by its program's own parser."""
  return [c for c in (as_command(*found) for found in SHELL_COMMANDS) if c]


def other_commands() -> list[tuple[str, int, str]]:
  """Every other command of the shell blocks: checked by `shell_problem`."""
  return [found for found in SHELL_COMMANDS if not as_command(*found)]


SHELL_COMMANDS = shell_commands()


def inline_commands() -> list[Command]:
  found = []
  for page in PAGES:
    for code in inline(page, "code_inline"):
      if re.match(r"progae \w+: (error|warning):", code.content):  # What it prints, quoted.
        continue
      command = as_command(page, 0, code.content)
      if command:
        found.append(command)
  return found


# ---------------------------------------------------------------------------------------------
# Running a program up to its argument parser


class _Parsed(Exception):
  def __init__(self, parser, args):
    super().__init__("parsed")
    self.parser, self.args = parser, args


def _stop_at_parse(parser, args=None, namespace=None):
  raise _Parsed(parser, sys.argv[1:] if args is None else list(args))


@contextlib.contextmanager
def _argv(argv: list[str], path: str | None = None):
  saved_argv, saved_path = sys.argv, list(sys.path)
  sys.argv = argv
  if path:
    sys.path.insert(0, path)
  try:
    yield
  finally:
    sys.argv, sys.path[:] = saved_argv, saved_path


@functools.cache
def reach_parser(kind: str, target: str, argv: tuple) -> tuple:
  """Runs the command until it parses its arguments: (parser, args it parses), or
  (None, its stdout) for a program that never parses any (it ran to the end)."""
  out = io.StringIO()
  with mock.patch.object(argparse.ArgumentParser, "parse_args", _stop_at_parse), \
      contextlib.redirect_stdout(out):
    try:
      if kind == "progae":
        from progae_jax import cli
        cli.main(list(argv))
      elif kind == "module":
        with _argv([target, *argv]):
          runpy.run_module(target, run_name="__main__", alter_sys=False)
      else:
        script = os.path.join(REPO, target)
        assert os.path.isfile(script), f"{target} does not exist"
        with _argv([script, *argv], path=os.path.dirname(script)):
          runpy.run_path(script, run_name="__main__")
    except _Parsed as parsed:
      return parsed.parser, parsed.args
    except SystemExit as e:
      if e.code not in (None, 0):
        raise
  return None, out.getvalue()


def parse_error(parser, args) -> str | None:
  """argparse's own complaint about `args`, or None when they parse."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      parser.parse_args(args)
    except SystemExit as e:
      return err.getvalue().strip() or f"exit status {e.code}"
  return None


def unknown_words(parser, words) -> list[str]:
  """The subcommand (if the parser has any) and the --flags of `words` that `parser` lacks."""
  subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  if subparsers:
    if not words or words[0] not in subparsers[0].choices:
      return words[:1] or ["(no subcommand)"]
    parser, words = subparsers[0].choices[words[0]], words[1:]
  words = words[:words.index("--")] if "--" in words else words  # Then positional, as argparse.
  return [w.split("=")[0] for w in words if w.startswith("--") and not _is_override(w)
          and w.split("=")[0] not in parser._option_string_actions]


def _is_override(word: str) -> bool:
  """`--config.KEY=VALUE` whose KEY is a config field (the CLI checks it the same way)."""
  from progae_jax import config_files
  if not word.startswith(config_files.OVERRIDE_PREFIX):
    return False
  key, _, text = word[len(config_files.OVERRIDE_PREFIX):].partition("=")
  try:
    config_files.apply_override({}, key, text)
  except config_files.ConfigError:
    return False
  return True


# ---------------------------------------------------------------------------------------------
# Commands


def _ids(commands):
  return [f"{c.page}:{c.line}:{c.text.strip()[:60]}" for c in commands]


BLOCK_COMMANDS = block_commands()


def test_the_pages_have_commands_to_check():
  pages = {c.page for c in BLOCK_COMMANDS}
  assert {"README.md", "docs/results.md", "docs/scaling.md"} <= pages, pages


@pytest.mark.parametrize("command", BLOCK_COMMANDS, ids=_ids(BLOCK_COMMANDS))
def test_every_command_in_a_code_block_parses_as_written(command):
  if command.kind == "make":
    with open(os.path.join(REPO, "Makefile")) as f:
      targets = re.findall(r"^([\w.-]+):", f.read(), re.M)
    assert command.target in targets, f"{command}: no such make target"
    return
  for word in command.argv:  # Files the command is given must be in the repository.
    if re.search(r"\.(py|sh|ipynb)$", word) and "/" in word:
      assert os.path.exists(os.path.join(REPO, word)), f"{command}: {word} does not exist"
  parser, args = reach_parser(command.kind, command.target, command.argv)
  if parser is not None:
    assert parse_error(parser, args) is None, f"{command}\n{parse_error(parser, args)}"


INLINE_COMMANDS = inline_commands()


@pytest.mark.parametrize("command", INLINE_COMMANDS, ids=_ids(INLINE_COMMANDS))
def test_every_command_in_the_text_names_real_flags(command):
  if command.kind == "make":
    return test_every_command_in_a_code_block_parses_as_written(command)
  # A fragment (`progae inspect`) may stop before its required arguments, so it is not
  # parsed whole: the program runs up to its parser with the words before the first flag,
  # then the subcommand and the flags are looked up in it.
  words = list(command.argv)
  head = tuple(itertools.takewhile(lambda w: not w.startswith("-"), words))
  parser, parsed = reach_parser(command.kind, command.target, head)
  if parser is None:  # It ran to the end without parsing arguments: it must be given none.
    assert not words, f"{command}: the program takes no arguments"
    return
  rest = words[len(head) - len(parsed):] if len(parsed) < len(head) else words
  assert not unknown_words(parser, rest), f"{command}: unknown {unknown_words(parser, rest)}"


def test_a_broken_command_is_caught():
  """The checker itself: a flag that does not exist, or a bad value, fails the parse."""
  bad = as_command("README.md", 1, "progae train --preset digits --no-such-flag")
  parser, args = reach_parser(bad.kind, bad.target, bad.argv)
  assert "--no-such-flag" in parse_error(parser, args)
  bad = as_command("README.md", 1, "python experiments/fade_length.py --seeds three")
  parser, args = reach_parser(bad.kind, bad.target, bad.argv)
  assert "invalid int value" in parse_error(parser, args)
  parser, _ = reach_parser("progae", "progae_jax.cli", ("train",))
  assert unknown_words(parser, ["train", "--frobnicate"]) == ["--frobnicate"]
  assert unknown_words(parser, ["tran"]) == ["tran"]


# Commands of other programs: each must be one this list knows, or a file of the repository.
KNOWN_TOOLS = {"cat", "cd", "cp", "export", "git", "ip", "ls", "mkdir", "pip", "tensorboard",
               "tfds", "wandb"}
# Words that name files of the repository (configs/main.py, tests/test_x.py::test_y).
REPO_FILE = re.compile(r"(configs|experiments|benchmarks|tests|docs|progae_jax|\.ci)/"
                       r"[\w./-]*\.(py|sh|ipynb|txt|cfg|md)")


def _extras() -> set[str]:
  import configparser
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, "setup.cfg"))
  return set(config["options.extras_require"])


def shell_problem(command: str) -> str | None:
  """What is wrong with a command line that is not progae, python -m progae_jax, a script of
  experiments/ or benchmarks/ or make, or None. Variables set in front of a script of the
  repository must be ones it reads; `time`, `sh -c`, `unshare` are looked through."""
  words = shlex.split(command)
  names = []
  while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
    names.append(words.pop(0).split("=")[0])
  if not words:
    return None
  program, args = words[0], words[1:]
  name = os.path.basename(program)
  if name in ("time", "unshare"):  # Wrappers: the command after their flags.
    rest = list(itertools.dropwhile(lambda w: w.startswith("-"), args))
    return shell_problem(shlex.join(rest)) if rest else f"{name} of nothing"
  if name in ("sh", "bash") and args[:1] == ["-c"] and len(args) > 1:
    return next(filter(None, (shell_problem(c) for c in segments(args[1]))), None)
  missing = [w for w in args if REPO_FILE.fullmatch(w.split("::")[0])
             and not os.path.exists(os.path.join(REPO, w.split("::")[0]))]
  if name == "cp" and args and not args[0].startswith(("/", "~", "-")) and \
      args[0] not in missing and not os.path.exists(os.path.join(REPO, args[0])):
    missing.append(args[0])
  if missing:
    return f"no such file in the repository: {missing}"
  if re.fullmatch(r"python3?(\.\d+)?", name):
    if args[:1] == ["-m"] and len(args) > 1:
      import importlib.util
      return None if importlib.util.find_spec(args[1]) else f"no module {args[1]}"
    return f"python runs {args[:1]}: only experiments/ and benchmarks/ scripts are documented"
  if name == "pip":
    extras = {e for w in args for e in re.findall(r"\[([\w,-]+)\]", w)}
    unknown = {x for e in extras for x in e.split(",")} - _extras()
    return f"setup.cfg has no extras {sorted(unknown)}" if unknown else None
  if "/" in program and not program.startswith(("/", "~")):
    path = os.path.join(REPO, program)
    if not os.access(path, os.X_OK):
      return f"{program} is not an executable file of the repository"
    with open(path, encoding="utf-8") as f:
      text = f.read()
    unread = [n for n in names if not re.search(rf"\b{n}\b", text)]
    return f"{program} does not read {unread}" if unread else None
  if name not in KNOWN_TOOLS:
    return f"{program} is not a command this test knows (KNOWN_TOOLS in tests/test_docs.py)"
  return None


OTHER_COMMANDS = other_commands()


@pytest.mark.parametrize("page, line, command", OTHER_COMMANDS,
                         ids=[f"{p}:{n}:{c[:60]}" for p, n, c in OTHER_COMMANDS])
def test_every_other_command_in_a_shell_block_is_known(page, line, command):
  assert shell_problem(command) is None, f"{page}:{line}: {command}: {shell_problem(command)}"


def test_every_shell_line_is_checked():
  """Every command of every shell line is one of the two checks', split at && and |; a
  fenced block names its language (`text` for output and pictures), so none is skipped."""
  assert segments("cp configs/main.py mine.py && progae train --config mine.py | tail -1") == [
      "cp configs/main.py mine.py", "progae train --config mine.py", "tail -1"]
  assert {c[2] for c in OTHER_COMMANDS} >= {"cp configs/main.py mine.py"}
  assert any("gpu_check.sh" in c[2] for c in OTHER_COMMANDS)
  unnamed = [f"{page}:{t.map[0] + 1}" for page in PAGES for t in tokens(page)
             if t.type == "fence" and not t.info.strip()]
  assert not unnamed, f"fenced blocks without a language: {unnamed}"


def test_a_wrong_shell_command_is_caught():
  assert "no such file" in shell_problem("cp configs/nothing.py mine.py")
  assert "does not read ['NO_SUCH']" in shell_problem("NO_SUCH=1 experiments/gpu_check.sh")
  assert "not an executable" in shell_problem("experiments/nothing.sh")
  assert "no extras ['nope']" in shell_problem('pip install -e ".[nope]"')
  assert "not a command this test knows" in shell_problem("frobnicate --now")
  assert "no such file" in shell_problem("sh -c 'ls; python -m pytest tests/test_nothing.py'")


# ---------------------------------------------------------------------------------------------
# Python blocks


def python_blocks(page: str) -> list[tuple[str, int]]:
  return [(text, first) for lang, text, first in code_blocks(page) if lang in ("python", "py")]


def _tiny(config):
  """The same run shrunk to seconds: a tiny model, two batches of 16 per phase."""
  from progae_jax.schedule import StageSchedule
  model = dataclasses.replace(config.model, latent_dim=8,
                              channels={r: 8 for r in config.model.resolutions})
  stage = StageSchedule(fade_images=32, stable_images=32, batch_size=16, learning_rate=1e-3)
  return dataclasses.replace(config, model=model, stages={}, default_stage=stage,
                             eval_images=16, eval_every_images=10**9,
                             checkpoint_every_images=10**9)


def _train_tiny(real):
  """`train_and_evaluate` on the tiny config, stopped (with its checkpoint) after the 4x4
  phase: one compile of each step is enough for a page's example (test_train.py trains
  through growth)."""
  return lambda config, workdir, **kw: real(_tiny(config), workdir, **kw,
                                            stop_after_images=32)


@pytest.mark.parametrize("page", RUN_PYTHON_OF)
def test_the_python_blocks_run_as_written(page, data_dir, tmp_path, monkeypatch):
  from progae_jax import train
  real = train.train_and_evaluate
  monkeypatch.setattr(train, "train_and_evaluate", _train_tiny(real))
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__doc__"}
  assert python_blocks(page), f"{page} has no Python block to run"
  for text, first in python_blocks(page):
    code = compile("\n" * (first) + text, os.path.join(REPO, page), "exec")
    exec(code, namespace)  # A failure's traceback points at the page's own line.


def _progae_names(tree: ast.AST) -> list[tuple[str, str]]:
  """(module, attribute) for every progae_jax name a block imports or uses."""
  aliases, used = {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("progae_jax"):
          aliases[a.asname or a.name] = a.name
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("progae_jax"):
      for a in node.names:
        used.append((node.module, a.name))
        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
        and node.value.id in aliases:
      used.append((aliases[node.value.id], node.attr))
  return used


def _has(dotted: str, attribute: str) -> bool:
  """Whether `dotted.attribute` names something: a module, or attributes of one."""
  parts = f"{dotted}.{attribute}".split(".")
  for i in range(len(parts), 0, -1):
    try:
      owner = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    for name in parts[i:]:
      if not hasattr(owner, name):
        return False
      owner = getattr(owner, name)
    return True
  return False


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_compiles_and_names_what_progae_jax_has(page):
  for text, first in python_blocks(page):
    tree = ast.parse(text, filename=f"{page}:{first}")
    missing = [f"{m}.{a}" for m, a in _progae_names(tree) if not _has(m, a)]
    assert not missing, f"{page}:{first}: progae_jax has no {missing}"


def _progae_modules() -> set[str]:
  import pkgutil
  import progae_jax
  return {m.name for m in pkgutil.iter_modules(progae_jax.__path__)}


@pytest.mark.parametrize("page", PAGES)
def test_every_function_and_file_named_in_the_text_exists(page):
  """`steps.make_train_step`, `parallel.global_batch()`, `progae_jax/growth.py`, ...: the
  names a page gives in inline code are the code's names."""
  modules, missing = _progae_modules(), []
  for code in inline(page, "code_inline"):
    text = code.content.strip()
    name = re.fullmatch(r"(?:progae_jax\.)?(\w+)\.([\w.]+?)(?:\(.*\))?", text)
    if re.fullmatch(r"\w+\.(json|jsonl|png|txt)", text):  # What a run writes, not the code's.
      continue
    if re.fullmatch(r"\w+\.(py|sh|ipynb)", text):  # A file of the module map or a script.
      if not any(os.path.exists(os.path.join(REPO, d, text)) for d in SOURCE_DIRS):
        missing.append(text)
    elif name and name.group(1) in modules:
      if not _has(f"progae_jax.{name.group(1)}", name.group(2)):
        missing.append(text)
    elif re.fullmatch(r"(progae_jax|experiments|benchmarks|tests|docs)/[\w./-]+", text) and \
        not re.search(r"/[A-Z_]+[/.]", text):  # NAME-like parts are placeholders.
      if not os.path.exists(os.path.join(REPO, text)):
        missing.append(text)
  assert not missing, f"{page} names what the repository does not have: {missing}"


def test_the_readme_printout_is_what_show_growth_prints():
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  after = readme[readme.index("`python experiments/show_growth.py`"):]
  printout = after[after.index("```text\n") + 8:]
  printout = printout[:printout.index("```")].strip().splitlines()
  parser, output = reach_parser("script", "experiments/show_growth.py", ())
  assert parser is None
  real = iter(output.splitlines())
  for line in printout:  # In order, each line of the README's excerpt in the real output.
    assert any(line == r for r in real), f"not printed by show_growth.py: {line!r}"
  assert len(printout) > 10


# ---------------------------------------------------------------------------------------------
# Links, references, size


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: str) -> set[str]:
  toks = tokens(page)
  return {_slug(toks[i + 1].content) for i, t in enumerate(toks) if t.type == "heading_open"}


@pytest.mark.parametrize("page", PAGES)
def test_links_and_pictures_resolve_inside_the_repository(page):
  targets = [c.attrs["href"] for c in inline(page, "link_open")]
  targets += [c.attrs["src"] for c in inline(page, "image")]
  for target in targets:
    if re.match(r"[a-z]+:", target):
      continue
    path, _, anchor = target.partition("#")
    where = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path)) if path else \
        os.path.join(REPO, page)
    assert where.startswith(REPO + os.sep), f"{page}: {target} leaves the repository"
    assert os.path.exists(where), f"{page}: {target} does not exist"
    if anchor:
      assert anchor in anchors(os.path.relpath(where, REPO)), f"{page}: no heading #{anchor}"


@pytest.mark.parametrize("page", PAGES)
def test_nothing_refers_outside_the_repository(page):
  text = open(os.path.join(REPO, page), encoding="utf-8").read()
  for pattern in (r"\.\./shared", r"DESIGN\.md", r"\bissue \d+"):
    assert not re.search(pattern, text, re.I), f"{page} refers to {pattern}"


def test_the_readme_is_a_front_page():
  size = os.path.getsize(os.path.join(REPO, "README.md"))
  assert size < README_LIMIT_BYTES, f"README.md is {size:,} bytes"
