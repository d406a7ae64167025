"""What an output carries: its rules applied to the entries it would publish, newest first.

Rules (all optional, per output): `include`/`exclude` patterns on an entry's title, content,
author or category (regular expressions, so a plain word matches itself; `(?i)` for any case);
`max_age`; `per_source_limit` (entries led by one source); `min_sources` (independent reports:
with `dedupe: event`, wire copies of one text count once); `title_template`.

Pure: no store, network or clock (`now` is an argument).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from datetime import datetime

from feeds.models import Cluster, OutputSpec, Story
from feeds.normalize import plain_text

FIELDS = ("title", "content", "author", "category")
TEMPLATE_FIELDS = ("title", "source", "reports", "outlets")
_SCAN = 20_000  # characters of an entry's text a pattern is tried on (a pattern from the config
# meets untrusted text: this bounds what even a slow pattern can cost)


def template_problem(template: str) -> str | None:
    """Why a title template cannot be used, or None."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"not a valid template: {exc}"
    unknown = [n for n in names if n not in TEMPLATE_FIELDS]
    if unknown:
        return f"unknown field {{{unknown[0]}}}: use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why a pattern is not a regular expression, or None."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    return None


def _texts(cluster: Cluster, field: str) -> list[str]:
    lead: Story = cluster.lead
    if field == "title":
        return [m.title for m in cluster.members]
    if field == "content":
        return [plain_text(lead.content_html or lead.summary_html)[:_SCAN]]
    if field == "author":
        return [a.name or a.email or "" for m in cluster.members for a in m.authors]
    return [c for m in cluster.members for c in m.categories]


def _matches(cluster: Cluster, rules: Mapping[str, Sequence[re.Pattern[str]]]) -> bool:
    return any(p.search(text[:_SCAN]) for field, patterns in rules.items() for p in patterns for text in _texts(cluster, field))


def compile_rules(rules: Sequence[tuple[str, Sequence[str]]]) -> dict[str, list[re.Pattern[str]]]:
    """(field, patterns) pairs as compiled patterns per field (validated at config load)."""
    return {field: [re.compile(p) for p in patterns] for field, patterns in rules if patterns}


def reports(cluster: Cluster) -> int:
    """Independent reports of an entry: one per copy cluster (copies of one text count once)."""
    return max(len(cluster.reports), 1)


def select(clusters: Sequence[Cluster], output: OutputSpec, *, now: datetime) -> list[Cluster]:
    """The entries an output publishes, in the order given, at most `output.limit`."""
    include = compile_rules(output.include_rules)
    exclude = compile_rules(output.exclude_rules)
    per_source: dict[str, int] = {}
    chosen = []
    for cluster in clusters:
        if output.max_age is not None and now - min(m.when for m in cluster.members) > output.max_age:
            continue
        if reports(cluster) < output.min_sources:
            continue
        if include and not all(_matches(cluster, {f: p}) for f, p in include.items()):
            continue
        if exclude and _matches(cluster, exclude):
            continue
        if output.per_source_limit is not None:
            seen = per_source.get(cluster.lead.source, 0)
            if seen >= output.per_source_limit:
                continue
            per_source[cluster.lead.source] = seen + 1
        chosen.append(cluster)
        if len(chosen) >= output.limit:
            break
    return chosen


def entry_title(cluster: Cluster, output: OutputSpec, outlet: str) -> str:
    """An entry's title: its lead's, or the output's `title_template` filled in."""
    if not output.title_template:
        return cluster.lead.title
    outlets = len({m.source for m in cluster.members})
    return output.title_template.format(title=cluster.lead.title, source=outlet, reports=reports(cluster), outlets=outlets)
