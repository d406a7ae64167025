"""feeds: an RSS/Atom/JSON Feed aggregator that merges syndicated stories and republishes them."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/feeds-aggregator/feeds"
USER_AGENT = f"feeds/{__version__} (+{PROJECT_URL})"
