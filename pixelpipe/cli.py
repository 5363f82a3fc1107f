"""`pixelpipe`: migrate the database, serve the collector, or run the whole local stack."""

from __future__ import annotations

import argparse
import sys

from pixelpipe.errors import PixelpipeError
from pixelpipe.settings import Settings


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pixelpipe.database import database_url
    from pixelpipe.migrations import migrate

    with database_url(settings) as url:
        applied, created = migrate(url)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (already up to date)'}")
    print(f"partitions created: {len(created)}")
    return 0


def cmd_collector(settings: Settings, args: argparse.Namespace) -> int:
    from ingest_service.server import serve

    return serve(settings, host=args.host, port=args.port, workers=args.workers)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from pixelpipe.stack import run_stack

    return run_stack(settings, demo=args.demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "migrate", help="apply sql/ migrations and create hourly partitions ahead"
    ).set_defaults(func=cmd_migrate)

    collector = sub.add_parser("collector", help="serve the HTTP collector")
    collector.add_argument("--host", default=None, help="default: PIXELPIPE_COLLECTOR_HOST")
    collector.add_argument("--port", type=int, default=None, help="default: PIXELPIPE_COLLECTOR_PORT")
    collector.add_argument(
        "--workers", type=int, default=None, help="default: PIXELPIPE_COLLECTOR_WORKERS"
    )
    collector.set_defaults(func=cmd_collector)

    up = sub.add_parser("up", help="run PostgreSQL, S3, the collector and Dagster locally")
    up.add_argument("--demo", action="store_true", help="serve /demo and generate traffic")
    up.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Settings.from_env(), args)
    except PixelpipeError as error:
        print(f"pixelpipe {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
