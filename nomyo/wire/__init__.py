"""A small HTTP/1.1 client for the hot path: the router's requests to its backends.

asyncio Protocols (so it runs on uvloop's fast transports), llhttp as the response parser
(through httptools), keep-alive connections per backend origin, chunked / Content-Length /
close-delimited bodies, backpressure both ways, and failures raised as the aiohttp exception
classes the rest of the router already handles (see errors.py). It does only what a relay
needs: no cookies, redirects, proxies or decompression.

    pool = Pool()
    response = await pool.request("POST", "http://127.0.0.1:11434/api/chat", headers, body,
                                  connect_timeout=5, first_byte_timeout=600)
    async for chunk in response.iter_chunks():
        ...
    response.release()
    await pool.close()
"""

from .errors import BrokenBody, ConnectTimeout, FirstByteTimeout, NotHttp
from .pool import Pool
from .request import Origin, Target, parse_target
from .response import Response

__all__ = ["BrokenBody", "ConnectTimeout", "FirstByteTimeout", "NotHttp", "Origin", "Pool", "Response", "Target",
           "parse_target"]
