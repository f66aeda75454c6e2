"""The documents stay true to the code and to their readers.

- docs/configuration.md lists every ``Settings`` field by its environment variable, with its
  default, and no variable the worker does not read;
- README.md stays short, with the two commands at the top;
- every relative link in README.md, docs/*.md, the bench's and chaos run's READMEs and the
  changelog points to a file (and heading) that exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app.settings import Settings
from tests.support import ROOT

CONFIGURATION = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
README_MAX_LINES = 200
#: The two commands must show within this many lines of the README's top.
README_COMMANDS_WITHIN = 30

#: Documented variables that are not ``Settings`` fields, with their defaults: the embedded
#: broker's port, read by app/embedded.py (make run, make worker) and app/endpoints.py (the
#: client's and the CLI's default bootstrap address).
NOT_SETTINGS = {"DELAYQ_EMBEDDED_PORT": "9092"}

_ENV_NAME = re.compile(r"`(DELAYQ_[A-Z0-9_]+)`")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


# -- the configuration table -------------------------------------------------------------------


def env_name(name: str, field: FieldInfo, settings: type[Settings] = Settings) -> str:
    """The environment variable pydantic-settings reads ``field`` from."""
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return alias.upper()
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def documented_default(default: object) -> str:
    """How the table writes a default: a literal in backticks, ``unset`` or ``empty``."""
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):  # as an environment variable says it
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def configuration_rows(text: str) -> dict[str, str]:
    """Variable -> its Default cell, from every table row whose first cell names variables."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 3:
            continue
        for name in _ENV_NAME.findall(cells[0]):
            assert name not in rows, f"{name} has two rows"
            rows[name] = cells[1]
    return rows


def configuration_errors(settings: type[Settings], text: str) -> list[str]:
    """What the table gets wrong about ``settings``: missing, wrong default, or unknown rows."""
    rows = configuration_rows(text)
    errors = []
    known = set(NOT_SETTINGS)
    for name, field in settings.model_fields.items():
        variable = env_name(name, field, settings)
        known.add(variable)
        default = None if field.default is PydanticUndefined else field.default
        shown = documented_default(default)
        cell = rows.get(variable)
        if cell is None:
            errors.append(f"{variable} (Settings.{name}) has no row")
        elif not (cell.startswith(shown) if default is None else shown in cell):
            errors.append(f"{variable}: default cell {cell!r} does not show {shown}")
    for variable, literal in NOT_SETTINGS.items():
        if variable in rows and f"`{literal}`" not in rows[variable]:
            errors.append(f"{variable}: default cell {rows[variable]!r} does not show `{literal}`")
    errors += [
        f"{variable} has a row but no Settings field" for variable in rows if variable not in known
    ]
    return errors


def test_configuration_table_matches_settings() -> None:
    assert configuration_errors(Settings, CONFIGURATION.read_text()) == []


def test_configuration_table_check_catches_an_undocumented_field() -> None:
    # Given a setting added to the code but not to the table
    class WithNewSetting(Settings):
        brand_new_knob: int = 7

    # Then the check names it
    errors = configuration_errors(WithNewSetting, CONFIGURATION.read_text())
    assert "DELAYQ_BRAND_NEW_KNOB (Settings.brand_new_knob) has no row" in errors


def test_configuration_table_check_catches_a_changed_default_and_a_stale_row() -> None:
    # Given a table whose partitions default is stale and that lists a removed variable
    text = CONFIGURATION.read_text().replace(
        "| `DELAYQ_PARTITIONS` | `8` |", "| `DELAYQ_PARTITIONS` | `4` |"
    )
    text += "\n| `DELAYQ_GONE` | `1` | removed |\n"

    # Then the check names both
    errors = configuration_errors(Settings, text)
    assert "DELAYQ_PARTITIONS: default cell '`4`' does not show `8`" in errors
    assert "DELAYQ_GONE has a row but no Settings field" in errors


# -- the README --------------------------------------------------------------------------------


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES
    top = "\n".join(lines[:README_COMMANDS_WITHIN])
    assert re.search(r"^make run\b", top, re.M), "`make run` not in the README's first lines"
    assert re.search(r"^make test\b", top, re.M), "`make test` not in the README's first lines"


# -- links -------------------------------------------------------------------------------------


def _prose(text: str) -> Iterator[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            yield line


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    anchors: set[str] = set()
    for line in _prose(text):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def relative_links(path: Path) -> Iterator[str]:
    for line in _prose(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # links shown as code are not links
        for match in _LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                yield target


DOCUMENTS = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
    ROOT / "chaos" / "README.md",
    ROOT / "CHANGELOG.md",
]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif (
            anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text())
        ):
            broken.append(f"{target}: no such heading")
    assert broken == []
