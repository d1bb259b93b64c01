"""Views: offline HTML (inlined assets, no CDN, no network) and matplotlib figures.

A leaf package: it takes plain arrays and data frames and imports nothing else of futurelens_tl.
"""
