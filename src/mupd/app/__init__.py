"""``mupd serve``: a local web page over a pipeline folder, for people who do not write Python.

``server.create_app(pipe)`` builds the FastAPI app (``pip install 'mupd[app]'``); ``jobs`` runs one
job at a time per device behind a visible queue; ``uploads`` checks every upload (size, pixels,
mode, RNA genes) before a job is queued; ``page``/``script`` hold the hand-written page (no
framework, no CDN: it works offline). ``cli`` registers ``mupd serve``.
"""
