"""Config validation: every error at once, each with file:line and the field path."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.config import load_settings
from feeds.errors import ConfigError
from tests.conftest import ROOT, run_feeds

BAD = """\
storage: sqlite:///feeds.db
publish_dir: public
sources:
  - name: good
    url: https://good.example/feed
  - name: good
    url: https://dupe.example/feed
  - name: typo
    url: https://typo.example/feed
    intervall: 15m
  - name: fast
    url: https://fast.example/feed
    interval: 30s
  - name: Bad Name
    url: ftp://files.example/feed
  - name: missing-file
    url: does/not/exist.xml
  - name: nonsense
    url: https://x.example/
    interval: soon
outputs:
  - name: all
    include: {sources: [good, ghost]}
    limit: 0
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "feeds.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return [p.replace(str(path), "CFG") for p in caught.value.problems]


def test_every_error_at_once_with_line_and_path(tmp_path: Path) -> None:
    found = problems(tmp_path, BAD)
    expected = [
        "CFG:6: sources[1].name: duplicate source name 'good' (also sources[0])",
        "CFG:10: sources[2].intervall: unknown key (check the spelling)",
        "CFG:13: sources[3].interval: must be at least 1m, got '30s'",
        "CFG:14: sources[4].name: must be a lowercase slug",
        "CFG:15: sources[4].url: unsupported scheme 'ftp'",
        "CFG:17: sources[5].url: no such file:",
        "CFG:20: sources[6].interval: not a duration",
        "CFG:23: outputs[0].include.sources[1]: no source named 'ghost'",
        "CFG:24: outputs[0].limit: Input should be greater than or equal to 1",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in found), (want, found)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    found = problems(tmp_path, "sources:\n  - name: a\n    url: [unclosed\n")
    assert found[0].startswith("CFG:") and "invalid YAML" in found[0]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    assert "empty" in problems(tmp_path, "")[0]
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    found = problems(tmp_path, "sources:\n  - name: a\n    url: https://a.example/\n    url: https://b.example/\n")
    assert "CFG:4: sources[0].url: duplicate key" in found


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.xml").write_text("<rss/>")
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "defaults: {interval: 2h}\nsources:\n  - {name: a, url: sub/f.xml, tags: [x]}\n  - {name: b, url: 'https://b.example/', interval: 10m}\n"
    )
    settings = load_settings(path)
    assert settings.sources[0].url == (tmp_path / "sub" / "f.xml").as_uri()
    assert settings.sources[0].interval == timedelta(hours=2) and settings.sources[1].interval == timedelta(minutes=10)
    assert settings.publish_dir == tmp_path / "public"
    assert [o.name for o in settings.outputs] == ["all"]
    assert settings.outputs[0].includes(settings.sources[0])


def test_bundled_config_is_valid() -> None:
    settings = load_settings(ROOT / "config" / "feeds.yaml")
    assert len(settings.sources) >= 4 and all(s.url.startswith("file://") for s in settings.sources)


def test_check_command_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    path.write_text(BAD)
    result = run_feeds("check", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 9 and all(line.startswith(f"{path}:") for line in lines)
    assert run_feeds("check").returncode == 0
    # a bad config never starts polling
    assert run_feeds("poll", "-c", str(path)).returncode == 2
    assert not (tmp_path / "feeds.db").exists()


def test_every_default_is_declared_once_and_the_readme_agrees() -> None:
    from dataclasses import fields

    from feeds.config import _Config
    from feeds.models import DedupeSettings, FetchSettings, ServerSettings, Settings, Source, WebSubSettings
    from feeds.timeutil import format_duration

    loaded = _Config.model_validate({"sources": [{"name": "a", "url": "http://a.example/"}]})
    runtime = {
        "fetch": FetchSettings(),
        "dedupe": DedupeSettings(),
        "server": ServerSettings(),
        "websub": WebSubSettings(),
    }
    for section, instance in runtime.items():
        model = getattr(loaded, section)
        for f in fields(instance):
            value = getattr(model, f.name)
            expected = getattr(instance, f.name)
            if isinstance(value, timedelta) and not isinstance(expected, timedelta):
                value = value.total_seconds()
            assert value == expected, f"{section}.{f.name}: config default {value!r}, runtime default {expected!r}"
    assert loaded.tick == Settings.__dataclass_fields__["tick"].default
    assert loaded.fetch.max_entries == Settings.__dataclass_fields__["max_entries"].default
    for key in ("interval", "min_interval", "max_interval"):
        assert getattr(loaded.defaults, key) == Source.__dataclass_fields__[key].default
    # The README's configuration table shows the same defaults.
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", readme, re.MULTILINE))
    checked = 0
    for section, instance in runtime.items():
        for f in fields(instance):
            key = f"{section}.{f.name}"
            if key not in rows or getattr(instance, f.name) is None:
                continue
            value = getattr(instance, f.name)
            if isinstance(value, timedelta):
                forms = {format_duration(value)}
            elif isinstance(value, int | float):
                forms = {str(value), f"{value:g}", f"{value:g}s"}
            else:
                forms = {str(value)}
            assert rows[key] in forms, f"README shows {key} = {rows[key]}, the default is {value}"
            checked += 1
    assert checked >= 15


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("hHtTpPsS:/[]@?#%.-1:0fi\\le ~ä\x00"), max_size=40) | st.text(max_size=40))
def test_any_url_in_a_config_is_a_problem_or_ok_never_a_crash(tmp_path_factory: pytest.TempPathFactory, url: str) -> None:
    # `http://[::1/feed` raised from urlsplit, `~0` and a NUL byte from the path checks: every
    # URL- or path-shaped text a config may hold is either valid or a problem with its line.
    directory = tmp_path_factory.mktemp("urls")
    path = directory / "feeds.yaml"
    text = f"base_url: {json.dumps(url)}\npublish_dir: {json.dumps(url)}\nwebsub: {{hub: {json.dumps(url)}}}\n"
    path.write_text(text + f"sources:\n  - name: a\n    url: {json.dumps(url)}\n")
    try:
        load_settings(path)
    except ConfigError as exc:
        assert all(p.startswith(f"{path}:") for p in exc.problems)
