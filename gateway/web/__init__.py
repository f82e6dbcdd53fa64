"""The web front: a static page and a JSON API over the gateway (``imagine web``)."""
