"""The tables of results in the pages are what experiments/render_results.py writes today.

A table edited by hand, or a result file changed without rendering the pages again, fails
here; so does a table whose result file does not say where it came from.
"""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import render_results  # noqa: E402


def _read(page):
  with open(os.path.join(REPO, page), encoding="utf-8") as f:
    return f.read()


@pytest.mark.parametrize("page", render_results.pages())
def test_every_table_is_what_the_renderer_writes_from_its_result_file(page):
  text = _read(page)
  for name in render_results.tables_in(text):
    block = text[text.index(render_results.START.format(name)):]
    written = block[len(render_results.START.format(name)) + 1:
                    block.index(render_results.END.format(name))]
    assert written == render_results.rendered(name), (
        f"{page}: the table {name!r} differs from its result file "
        f"({render_results.TABLES[name].source}); run python experiments/render_results.py")


def test_every_table_is_in_one_page_and_every_page_table_is_registered():
  placed = {}
  for page in render_results.pages():
    for name in render_results.tables_in(_read(page)):
      assert name in render_results.TABLES, f"{page}: no table named {name!r}"
      placed.setdefault(name, []).append(page)
  assert placed.keys() == render_results.TABLES.keys(), \
      f"tables in no page: {sorted(render_results.TABLES.keys() - placed.keys())}"
  twice = {name: pages for name, pages in placed.items() if len(pages) > 1}
  assert not twice, f"a table in more than one page (one place per fact): {twice}"


@pytest.mark.parametrize("name", sorted(render_results.TABLES))
def test_every_result_file_says_where_it_came_from(name):
  source = render_results.TABLES[name].source
  known = render_results.provenance(render_results.load(source))
  missing = [key for key in render_results.PROVENANCE if not known.get(key)]
  assert not missing, f"{source} does not record its {missing}"


def test_a_table_edited_by_hand_is_rewritten_and_an_unknown_one_refused():
  name = "seed_digits"
  page = (f"Before.\n{render_results.START.format(name)}\n| a | number typed by hand |\n"
          f"{render_results.END.format(name)}\nAfter.\n")
  written = render_results.render_page(page)
  assert written != page and "| a | number typed by hand |" not in written
  assert written.startswith("Before.\n") and written.endswith("After.\n")
  assert render_results.render_page(written) == written  # Rendering twice changes nothing.
  assert "seed_digits/result.json" in written and "2026-" in written  # Its source and date.
  with pytest.raises(KeyError, match="no table named 'nope'"):
    render_results.render_page("<!-- results: nope -->\n<!-- /results: nope -->")
