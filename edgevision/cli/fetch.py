"""`edgevision fetch NAME`: download a model's weights once (SHA-256 checked) and print the cached path."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("fetch", help="download a model's official weights into the cache, print the path")
    p.add_argument("name", help="model name, e.g. emo_1m")
    p.add_argument("--url", help="fetch from this https:// or file:// URL instead of the registered "
                   "official weights (a different file: verified only with --sha256)")
    p.add_argument("--sha256", help="expected SHA-256 of the file (default: the one registered with the "
                   "model's official weights; none for --url)")
    p.add_argument("--cache", help="cache folder (default $EDGEVISION_CACHE or ~/.cache/edgevision)")
    p.add_argument("--force", action="store_true", help="download again even when a good cached copy exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgevision.hub import _expected_sha256, _is_registered, fetch_weights

    path = fetch_weights(args.name, url=args.url, cache=args.cache, force=args.force, sha256=args.sha256)
    if not _is_registered(args.name, args.url):
        verified = "SHA-256 verified" if _expected_sha256(args.name, args.url, args.sha256) else \
            "not hash-verified (give --sha256 to check it)"
        print(f"edgevision fetch: note: {args.url} is not {args.name}'s registered official weights "
              f"URL; {verified}", file=sys.stderr)
    print(path)
    return 0
