"""Operations: the running gateway process.

Start-up (``bootstrap``: state directory, TLS material, the first admin; ``runtime``:
facts settled at start), the listener and graceful stop (``server``), several worker
processes (``workers``), reloading settings (``reload``), health and metrics endpoints
(``health``) and periodic work (``background``).

The top of the gateway: may import every other gateway package.
"""
