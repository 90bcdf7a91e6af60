"""Worked examples: an external task family (``nav2d``) and a curriculum (``curriculum``)."""
