"""Reports from stored files: the data (``data``, ``insights``), the plots (``plots``, matplotlib SVG) and the
HTML pages (``html``, Jinja2 templates in ``templates/``)."""
