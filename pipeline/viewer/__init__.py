"""The report's deep-zoom slide viewer: tile pyramids (``pyramid``), the page data (``data``), the
pages (``pages``) and the browser library they ship (``assets``). See docs/architecture.md §1."""
