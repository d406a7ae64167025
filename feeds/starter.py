"""`feeds init`: a commented starter config and a samples folder, so a new directory polls,
merges and publishes offline at once. The sample feeds are dated relative to when they are
written, so the demo reads as today's news rather than ageing with every day."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

from feeds.errors import FeedsError

CONFIG = """\
# feeds configuration, written by `feeds init`. Check it with `feeds check`; every key is
# documented in the README. Relative paths are relative to this file.

storage: sqlite:///feeds.db         # the store (or postgresql://user@host/db for many workers)
publish_dir: public                 # outputs go to public/<name>.atom, .rss and .json
base_url: http://localhost:8080/    # the address readers reach this server at

defaults:
  interval: 30m                     # how often to poll (adapted to each source's rate)

sources:
  # Two sample feeds written by `feeds init`, so `feeds poll` works offline. Replace them with
  # yours: `feeds sources add https://example.org/` finds a site's feed, and
  # `feeds sources import subscriptions.opml` brings a reader's list.
  - name: sample-wire
    url: samples/wire.xml
    tags: [news]
    priority: 10                    # the wire's full text leads a story it carries
  - name: sample-local
    url: samples/local.atom
    tags: [news, local]

outputs:
  - name: all                       # public/all.atom, all.rss, all.json
    title: All stories
  - name: local
    title: Local news
    include:
      tags: [local]
"""

_WIRE_STORY = (
    "Harbor city approves $48 million seawall to protect waterfront homes",
    "HARBOR CITY (Sample Wire) -- The Harbor City council voted 7-2 on {weekday} to build a $48 million seawall "
    "along the northern waterfront, where winter storms flooded more than 200 homes in each of the last three "
    "years. Construction is set to begin next spring and take about four years, Mayor Elena Ruiz said.",
)
_LOCAL_STORY = (
    "Waterfront neighbours cheer seawall vote",
    "Residents of Harbor City's northern waterfront packed the council chamber on {weekday} as councillors voted "
    "7-2 for the $48 million seawall. Mayor Elena Ruiz said the work would start next spring; more than 200 homes "
    "have flooded in each of the last three winters.",
)
_SECOND_STORY = (
    "Library extends weekend hours",
    "The Harbor City public library will open until 8 p.m. on Saturdays from next month, the library board said, "
    "after a survey of 1,400 readers asked for later hours.",
)


def _wire(now: datetime) -> str:
    items = []
    for hours, (title, text), slug in ((3, _WIRE_STORY, "seawall"), (26, _SECOND_STORY, "library")):
        when = now - timedelta(hours=hours)
        body = text.format(weekday=f"{when:%A}")
        items.append(
            f"<item><title>{escape(title)}</title><link>https://wire.example/{slug}</link>"
            f'<guid isPermaLink="false">sample-wire-{slug}</guid><pubDate>{format_datetime(when)}</pubDate>'
            f"<description>{escape(f'<p>{body}</p>')}</description></item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>Sample Wire</title>'
        f"<link>https://wire.example/</link><description>A sample wire service</description>{''.join(items)}"
        "</channel></rss>\n"
    )


def _local(now: datetime) -> str:
    when = now - timedelta(hours=2)
    title, text = _LOCAL_STORY
    body = text.format(weekday=f"{when - timedelta(hours=1):%A}")
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom"><title>Sample Local</title>'
        f'<id>urn:sample:local</id><updated>{when.isoformat()}</updated><link href="https://local.example/"/>'
        f'<entry><title>{escape(title)}</title><id>urn:sample:local:seawall</id><link href="https://local.example/seawall"/>'
        f'<updated>{when.isoformat()}</updated><author><name>Sam Reyes</name></author><content type="html">'
        f"{escape(f'<p>{body}</p>')}</content></entry></feed>\n"
    )


def write_starter(directory: Path, *, now: datetime) -> list[Path]:
    """Write feeds.yaml and samples/ into `directory` (created if needed); refuse to overwrite
    anything. Returns the files written."""
    files = {
        directory / "feeds.yaml": CONFIG,
        directory / "samples" / "wire.xml": _wire(now),
        directory / "samples" / "local.atom": _local(now),
    }
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise FeedsError(f"{', '.join(existing)} exists already; nothing was written (init never overwrites)")
    try:
        (directory / "samples").mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            with path.open("x", encoding="utf-8") as out:  # "x": never replace a file that appeared meanwhile
                out.write(text)
    except OSError as exc:
        raise FeedsError(f"{directory}: cannot write the starter files: {exc.strerror or exc}") from exc
    return list(files)
