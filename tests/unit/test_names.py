"""app.names: the wire contract's names and rules, one copy for the client and the worker."""

from __future__ import annotations

import pytest

from app import client, commands, names, settings
from app.api import models


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("a.b_c-D9", True),
        ("x" * 249, True),
        ("...", True),
        ("x" * 250, False),
        ("", False),
        (".", False),
        ("..", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
    ],
)
def test_valid_topic_name_is_kafkas_rule(name: str, valid: bool) -> None:
    assert names.valid_topic_name(name) is valid


def test_the_changelog_topic_is_named_after_the_app_id() -> None:
    assert names.changelog_topic("delayq") == "delayq-jobs-changelog"


def test_client_and_worker_use_the_one_copy_of_each_rule() -> None:
    # The client must not import the worker's modules, so it once kept copies of these.
    assert client.MAX_JOB_ID_BYTES is names.MAX_JOB_ID_BYTES
    assert commands.MAX_JOB_ID_BYTES is names.MAX_JOB_ID_BYTES
    assert models.MAX_JOB_ID_BYTES is names.MAX_JOB_ID_BYTES
    for module in (commands, settings, models):
        assert module.valid_topic_name is names.valid_topic_name
    assert client.names is names
