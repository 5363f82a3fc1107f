"""`pixelpipe`: migrate the database, serve the collector, or run the whole local stack."""

from __future__ import annotations

import argparse
import contextlib
import sys

from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.settings import Settings


def _say(command: str, text: str) -> None:
    print(f"pixelpipe {command}: {text}", file=sys.stderr)


def stack_database_url(settings: Settings, command: str = "erase") -> str:
    """DATABASE_URL, else the PostgreSQL of the `pixelpipe up` running for this PIXELPIPE_HOME;
    a one-line PixelpipeError naming the fix when neither answers. Says which on stderr."""
    from pixelpipe.core.database import check_reachable, describe_target, local_database_url

    if settings.database_url:
        check_reachable(settings.database_url)
        _say(command, f"using DATABASE_URL ({describe_target(settings.database_url)})")
        return settings.database_url
    url = local_database_url(settings)
    if url is None or not _answers(url):
        raise PixelpipeError(
            f"no database: DATABASE_URL is not set and the local stack in {settings.home} (PIXELPIPE_HOME) "
            f"is not running (its PostgreSQL does not answer on 127.0.0.1:{settings.postgres_port}). Start it with "
            "`pixelpipe up`, or set DATABASE_URL.")
    _say(command, f"using the local stack's PostgreSQL ({describe_target(url)}, PIXELPIPE_HOME={settings.home})")
    return url


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def database_for(settings: Settings, command: str):
    """DATABASE_URL, else the running local stack's PostgreSQL, else an embedded one started for
    this command and stopped after it (`migrate` and `site` work with or without `pixelpipe up`)."""
    from pixelpipe.core.database import local_database_url
    from pixelpipe.embedded_postgres import database_url
    from pixelpipe.process import port_is_free

    local = None if settings.database_url else local_database_url(settings)
    if local is not None and not port_is_free(settings.postgres_port):
        yield stack_database_url(settings, command)
        return
    if not settings.database_url:
        _say(command, f"no stack running: starting the embedded PostgreSQL of {settings.home} for this command")
    else:
        from pixelpipe.core.database import describe_target

        _say(command, f"using DATABASE_URL ({describe_target(settings.database_url)})")
    with database_url(settings) as url:
        yield url


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pixelpipe.core.migrations import migrate

    with database_for(settings, "migrate") as url:
        applied, created = migrate(url)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (already up to date)'}")
    print(f"partitions created: {len(created)}")
    return 0


def cmd_collector(settings: Settings, args: argparse.Namespace) -> int:
    from pixelpipe.collector import serve

    return serve(settings, host=args.host, port=args.port, workers=args.workers,
                 database=lambda settings: database_for(settings, "collector"))


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from pixelpipe.stack import run_stack

    return run_stack(settings, demo=args.demo)


def cmd_site(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from pixelpipe.core import sites
    from pixelpipe.core.migrations import apply_migrations

    with database_for(settings, "site") as url:
        apply_migrations(url)
        with psycopg.connect(url, autocommit=True) as conn:
            if args.site_command == "list":
                rows = sites.list_sites(conn)
                print("site_id\tallowed\tallowed_hosts\tbucket\tprefix\twrite_key\trequire_key")
                for site in rows:
                    print("\t".join([site.site_id, "yes" if site.allowed else "no",
                                     ",".join(site.allowed_hosts or []) or "(any)",
                                     site.client_bucket or f"(default: {settings.client_bucket})",
                                     site.client_prefix or "", "set" if site.has_write_key else "-",
                                     "yes" if site.require_key else "no"]))
            elif args.site_command == "key":
                print(sites.new_write_key(conn, args.site))  # stdout: the key alone
                print(f"pixelpipe site key: a new write key for {args.site!r} was stored (as a hash); it "
                      "is shown only this once and the old one no longer works. Send it as "
                      "'Authorization: Bearer <key>'.", file=sys.stderr)
            else:
                hosts = "keep" if args.allowed_hosts is None else sites.parse_hosts(args.allowed_hosts)
                sites.save_site(conn, args.site, create=args.site_command == "add",
                                allowed=args.allowed, allowed_hosts=hosts,
                                client_bucket=args.bucket, client_prefix=args.prefix,
                                require_key=args.require_key)
                print(f"site {args.site}: saved (the collector picks it up within seconds)")
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from pixelpipe.backfill import parse_hour, partition_keys, submit_backfill

    keys = partition_keys(parse_hour(args.start, "--from"), parse_hour(args.end, "--to"),
                          datetime.now(UTC), settings.export_grace_minutes)
    dagster_url = f"http://127.0.0.1:{settings.dagster_port}"
    backfill_id = submit_backfill(dagster_url, keys)
    print(backfill_id)  # stdout: the id alone, for scripts
    per_run = max(1, settings.backfill_hours_per_run)
    print(f"pixelpipe backfill: {len(keys)} hours of hourly_export submitted as backfill {backfill_id} "
          f"(runs of at most {per_run} hours, PIXELPIPE_BACKFILL_HOURS_PER_RUN). Follow it at "
          f"{dagster_url}/runs/b/{backfill_id}", file=sys.stderr)
    return 0


def verify_s3(settings: Settings) -> tuple[str, str, str]:
    """(endpoint, access key, secret key) verify reads with: PIXELPIPE_S3_ENDPOINT and AWS_*
    when set, else the running local stack's S3 with its read-only keys, else AWS's own chain.
    Says which on stderr."""
    from pixelpipe.core.s3 import local_s3

    if not settings.s3_endpoint and not settings.aws_access_key_id:
        local = local_s3(settings.home, settings.s3_port, "reader-credentials.json")
        if local is not None:
            _say("verify", f"using the local stack's S3 at {local[0]} with its read-only keys "
                 f"(PIXELPIPE_HOME={settings.home})")
            return local
    _say("verify", f"using S3 at {settings.s3_endpoint or 'AWS'} with "
         f"{'AWS_ACCESS_KEY_ID' if settings.aws_access_key_id else 'the AWS credential chain'}")
    return settings.s3_endpoint, settings.aws_access_key_id, settings.aws_secret_access_key


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Check a bucket against its receipts with S3 read access only: no database, no stack."""
    from datetime import UTC, datetime

    from botocore.exceptions import BotoCoreError, ClientError

    from pixelpipe.backfill import parse_hour
    from pixelpipe.core.receipts import verify_location
    from pixelpipe.core.s3 import s3_client

    if not args.target.startswith("s3://") or len(args.target) <= 5:
        raise PixelpipeError(f"{args.target!r} is not a bucket: write it as s3://BUCKET or s3://BUCKET/PREFIX.")
    bucket, _, prefix = args.target[5:].partition("/")
    start = parse_hour(args.start, "--from") if args.start else None
    end = parse_hour(args.end, "--to") if args.end else None
    client = s3_client(*verify_s3(settings), settings.aws_region)
    try:
        if args.billing:
            from pixelpipe.core.statements import verify_statement

            try:
                month = datetime.strptime(args.billing, "%Y-%m").replace(tzinfo=UTC)
            except ValueError:
                raise PixelpipeError(f"--billing {args.billing!r} is not a month: write it as 2026-10.") from None
            checked, problems = verify_statement(client, bucket, prefix, month)
            what = f"sites of the {args.billing} statement"
        elif args.dataset in (None, "events"):
            checked, problems = verify_location(client, bucket, prefix, args.site, start, end)
            what = "site-hours"
        if not args.billing and args.dataset != "events":
            from pixelpipe.core.receipts import verify_datasets

            if args.dataset is None:
                print(f"{checked} {what} checked under {args.target}: " + (
                    f"{len(problems)} problems" if problems else "all match their receipts"), file=sys.stderr)
            days, day_problems = verify_datasets(client, bucket, prefix, args.site,
                                                 (args.dataset,) if args.dataset else None)
            checked, what = days, "site-days of analytics"
            problems = ([] if args.dataset else problems) + day_problems
    except (BotoCoreError, ClientError) as error:
        raise PixelpipeError(f"cannot read s3://{bucket}/{prefix}: {_one_line(error)}. Check that the local "
                             "stack is running (`pixelpipe up`), or PIXELPIPE_S3_ENDPOINT and "
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (read access is enough).") from None
    for problem in problems:
        print(problem)
    summary = f"{checked} {what} checked under {args.target}: "
    print(summary + (f"{len(problems)} problems" if problems else "all match their receipts"),
          file=sys.stderr)
    return 1 if problems else 0


def cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    """Erase a visitor now, in this process; the same code as the erase_visitor_job in Dagster.
    With --in-dagster, store the request for that job instead (its config then holds only the
    request's id: Dagster keeps run config for good)."""
    import psycopg

    from pipeline.erasure import erase_visitor, store_request
    from pipeline.export_settings import ExportSettings
    from pixelpipe.core.migrations import apply_migrations
    from pixelpipe.core.s3 import configured_s3_client

    url = stack_database_url(settings)
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        if args.in_dagster:
            request_id = store_request(conn, args.site, args.visitor, args.reason)
            print(request_id)  # stdout: the request id alone, for scripts
            print(f"pixelpipe erase: request {request_id} stored. Launch erase_visitor_job with the config "
                  f"`ops: {{erase_visitor: {{config: {{request_id: {request_id}}}}}}}` "
                  f"(http://127.0.0.1:{settings.dagster_port}/jobs/erase_visitor_job/playground); the request "
                  "is deleted when the erasure finishes.", file=sys.stderr)
            return 0
        client = configured_s3_client(settings)
        _say("erase", f"using S3 at {client.meta.endpoint_url}")
        erasure = erase_visitor(conn, client, ExportSettings.from_settings(settings), args.site, args.visitor,
                                args.reason)
    print(erasure.erasure_id)  # stdout: the ledger id alone, for scripts
    hours = len(erasure.hours_rewritten)
    print(f"pixelpipe erase: erasure {erasure.erasure_id} of a visitor of site {erasure.site}: "
          f"{erasure.rows_in_database} rows removed from events_log, {erasure.rows_in_files} from the "
          f"exported files ({hours} hour{'s' if hours != 1 else ''} rewritten in the client and backup "
          f"buckets, receipts included), {erasure.dead_letters} dead letters. Recorded in the erasures "
          "table (the visitor as SHA-256).", file=sys.stderr)
    return 0


def _site_parser(sub) -> None:
    site = sub.add_parser("site", help="manage tenants: list, add, set, key")
    site.set_defaults(func=cmd_site)
    commands = site.add_subparsers(dest="site_command", required=True)
    commands.add_parser("list", help="every site with its admission settings")
    for name, text in (("add", "add a site (under PIXELPIPE_SITE_POLICY=allowlist: admit it)"),
                       ("set", "change a site's settings")):
        command = commands.add_parser(name, help=text)
        command.add_argument("site")
        allowed = command.add_mutually_exclusive_group()
        allowed.add_argument("--allow", dest="allowed", action="store_const", const=True,
                             help="accept its events")
        allowed.add_argument("--block", dest="allowed", action="store_const", const=False,
                             help="dead-letter its events (site_not_allowed)")
        command.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                             help="comma-separated page hosts (and their subdomains) its browser "
                             "events may come from; '' for any host")
        command.add_argument("--bucket", default=None, help="its own client bucket ('' for the default)")
        command.add_argument("--prefix", default=None, help="key prefix in the client bucket")
        command.add_argument("--require-key", default=None, action=argparse.BooleanOptionalAction,
                             help="take its events only with its write key (keyless pixel, /collect and "
                             "Snowplow are dead-lettered); --no-require-key lifts it")
    key = commands.add_parser("key", help="create a new write key, print it once (the old one stops working)")
    key.add_argument("site")


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

    _site_parser(sub)

    backfill = sub.add_parser("backfill", help="submit a Dagster backfill of hourly_export to the running stack")
    backfill.add_argument("--from", dest="start", required=True, metavar="HOUR", help="first ingest hour, e.g. 2026-11-24-00:00 (UTC)")
    backfill.add_argument("--to", dest="end", required=True, metavar="HOUR", help="last ingest hour, inclusive")
    backfill.set_defaults(func=cmd_backfill)

    verify = sub.add_parser("verify", help="check a bucket's files against their receipts (S3 read access only)")
    verify.add_argument("target", metavar="s3://BUCKET[/PREFIX]")
    verify.add_argument("--site", help="only this site")
    verify.add_argument("--from", dest="start", metavar="HOUR", help="first ingest hour, e.g. 2026-11-24-00:00 (UTC)")
    verify.add_argument("--to", dest="end", metavar="HOUR", help="last ingest hour, inclusive")
    verify.add_argument("--dataset", choices=["events", "sessions", "pageviews", "daily_site_metrics",
                                              "page_performance"],
                        help="only the raw hours (events) or one analytics dataset; all by default")
    verify.add_argument("--billing", metavar="YYYY-MM", help="recompute that month's statement from the receipts")
    verify.set_defaults(func=cmd_verify)

    erase = sub.add_parser("erase", help="remove one visitor of one site from the database and every "
                           "exported file and receipt, in both buckets")
    erase.add_argument("--site", required=True, help="the site_id")
    erase.add_argument("--visitor", required=True, help="the visitor_id, as in events_log and the files")
    erase.add_argument("--reason", default="erasure request",
                       help="why, kept in the erasures ledger (e.g. a request's reference)")
    erase.add_argument("--in-dagster", action="store_true",
                       help="store the request for erase_visitor_job instead of erasing now")
    erase.set_defaults(func=cmd_erase)

    up = sub.add_parser("up", help="run PostgreSQL, S3, the collector and Dagster locally")
    up.add_argument("--demo", action="store_true", help="serve /demo and generate traffic")
    up.set_defaults(func=cmd_up)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def explain(error: Exception) -> str | None:
    """What a store's failure that escaped a command means to the user, in one line naming the
    fix; None for anything else (a bug: its traceback is worth having)."""
    import psycopg
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, psycopg.Error):
        return (f"PostgreSQL failed ({_one_line(error)}). Check that the local stack is running "
                "(`pixelpipe up`) or that DATABASE_URL points at a server that is up, then run the command again.")
    if isinstance(error, (BotoCoreError, ClientError)):
        return (f"S3 failed ({_one_line(error)}). Check that the local stack is running (`pixelpipe up`) "
                "or PIXELPIPE_S3_ENDPOINT and the AWS_* keys, then run the command again.")
    if isinstance(error, OSError):
        return f"{_one_line(error)}. Check the path, the permissions and the network named there, then run it again."
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Settings.from_env(), args)
    except PixelpipeError as error:
        print(f"pixelpipe {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        message = explain(error)
        if message is None:
            raise
        print(f"pixelpipe {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
