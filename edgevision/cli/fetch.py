"""`edgevision fetch NAME`: download a model's official weights once and print the cached path."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("fetch", help="download a model's official weights into the cache, print the path")
    p.add_argument("name", help="model name, e.g. emo_1m")
    p.add_argument("--url", help="fetch from this URL instead of the registered one")
    p.add_argument("--cache", help="cache folder (default $EDGEVISION_CACHE or ~/.cache/edgevision)")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgevision.hub import fetch_weights

    print(fetch_weights(args.name, url=args.url, cache=args.cache))
    return 0
