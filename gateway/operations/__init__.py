"""Operations: the running gateway process.

The aiohttp application that holds the gateway's services and serves the management API
(``app``); start-up (``bootstrap``: state directory, TLS material, the first admin); the
listener and graceful stop (``server``); several worker processes (``workers``);
reloading settings (``reload``); health and metrics endpoints (``health``, ``sampler``);
periodic work (``background``).

The top of the gateway: may import every other gateway package.
"""
