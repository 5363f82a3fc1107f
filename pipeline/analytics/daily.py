"""One site's UTC day of exported events -> the four analytics datasets, in DuckDB.

The input is the day's hour files as the export wrote them (any schema version); the output is
zstd Parquet per dataset, in fixed schemas, rows in a fixed order, so the same hours always give
the same bytes. DuckDB runs in process, memory-limited, spilling to the spool directory. The
definitions (what a pageview, a session, a bounce is) come from definitions.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.analytics import definitions as d

ANALYTICS_SCHEMA_VERSION = 1
_TS = pa.timestamp("us", tz="UTC")


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"pixelpipe.dataset": name,
                                       "pixelpipe.schema_version": str(ANALYTICS_SCHEMA_VERSION)})


# The client's contract, by dataset (docs/analytics.md lists each column with its meaning).
SCHEMAS = {
    "sessions": _schema("sessions", [
        pa.field("site_id", pa.string(), nullable=False), pa.field("session_id", pa.string(), nullable=False),
        pa.field("visitor_id", pa.string(), nullable=False), pa.field("session_start", _TS, nullable=False),
        pa.field("session_end", _TS, nullable=False), pa.field("duration_seconds", pa.int32(), nullable=False),
        pa.field("pageview_count", pa.int32(), nullable=False), pa.field("event_count", pa.int32(), nullable=False),
        pa.field("bounce", pa.bool_(), nullable=False), pa.field("entry_url", pa.string()),
        pa.field("entry_path", pa.string()), pa.field("entry_title", pa.string()),
        pa.field("exit_url", pa.string()), pa.field("exit_path", pa.string()),
        pa.field("utm_source", pa.string()), pa.field("utm_medium", pa.string()),
        pa.field("utm_campaign", pa.string()), pa.field("utm_content", pa.string()),
        pa.field("utm_term", pa.string()), pa.field("referrer_type", pa.string(), nullable=False),
        pa.field("referrer_platform", pa.string()), pa.field("original_referrer", pa.string()),
        pa.field("user_agent", pa.string()), pa.field("browser", pa.string()), pa.field("os", pa.string()),
        pa.field("device_type", pa.string()), pa.field("browser_language", pa.string()),
        pa.field("timezone", pa.string()), pa.field("screen_width", pa.int32()),
        pa.field("screen_height", pa.int32()), pa.field("viewport_width", pa.int32()),
        pa.field("viewport_height", pa.int32()), pa.field("source", pa.string(), nullable=False),
    ]),
    "pageviews": _schema("pageviews", [
        pa.field("site_id", pa.string(), nullable=False), pa.field("session_id", pa.string()),
        pa.field("visitor_id", pa.string()), pa.field("event_id", pa.string(), nullable=False),
        pa.field("url", pa.string()), pa.field("path", pa.string()), pa.field("title", pa.string()),
        pa.field("view_timestamp", _TS, nullable=False), pa.field("time_on_page_seconds", pa.int32()),
        pa.field("referrer", pa.string()), pa.field("internal_referrer", pa.bool_(), nullable=False),
        pa.field("utm_source", pa.string()), pa.field("utm_medium", pa.string()),
        pa.field("utm_campaign", pa.string()), pa.field("utm_content", pa.string()),
        pa.field("utm_term", pa.string()),
    ]),
    "daily_site_metrics": _schema("daily_site_metrics", [
        pa.field("site_id", pa.string(), nullable=False), pa.field("metric_date", pa.date32(), nullable=False),
        pa.field("unique_visitors", pa.int32(), nullable=False), pa.field("total_sessions", pa.int32(), nullable=False),
        pa.field("total_pageviews", pa.int32(), nullable=False), pa.field("bounce_rate", pa.float64()),
        pa.field("avg_session_duration_seconds", pa.int32()), pa.field("avg_pages_per_session", pa.float64()),
        pa.field("total_events", pa.int32(), nullable=False), pa.field("direct_sessions", pa.int32(), nullable=False),
        pa.field("search_sessions", pa.int32(), nullable=False), pa.field("social_sessions", pa.int32(), nullable=False),
        pa.field("referral_sessions", pa.int32(), nullable=False),
    ]),
    "page_performance": _schema("page_performance", [
        pa.field("site_id", pa.string(), nullable=False), pa.field("metric_date", pa.date32(), nullable=False),
        pa.field("path", pa.string()), pa.field("total_views", pa.int32(), nullable=False),
        pa.field("unique_visitors", pa.int32(), nullable=False), pa.field("unique_sessions", pa.int32(), nullable=False),
        pa.field("avg_time_on_page_seconds", pa.float64()), pa.field("entries", pa.int32(), nullable=False),
        pa.field("exits", pa.int32(), nullable=False), pa.field("bounce_rate", pa.float64()),
    ]),
}
DATASETS = tuple(SCHEMAS)

# Where each protocol keeps what the raw columns do not: JSON paths into raw_event_data.
# pixelpipe is t.js (docs/tracker.md), segment also RudderStack, snowplow the tracker protocol.
_FIELD_PATHS = {
    "referrer": {"pixelpipe": "$.referrer", "segment": "$.context.page.referrer",
                 "posthog": '$.properties."$referrer"', "snowplow": "$.refr"},
    "title": {"pixelpipe": "$.title", "segment": "$.context.page.title",
              "posthog": "$.properties.title", "snowplow": "$.page"},
    "language": {"pixelpipe": "$.language", "segment": "$.context.locale",
                 "posthog": '$.properties."$browser_language"', "snowplow": "$.lang"},
    "timezone": {"pixelpipe": "$.timezone", "segment": "$.context.timezone",
                 "posthog": '$.properties."$timezone"', "snowplow": "$.tz"},
    "screen_width": {"pixelpipe": "$.screenWidth", "segment": "$.context.screen.width",
                     "posthog": '$.properties."$screen_width"'},
    "screen_height": {"pixelpipe": "$.screenHeight", "segment": "$.context.screen.height",
                      "posthog": '$.properties."$screen_height"'},
    "viewport_width": {"pixelpipe": "$.viewportWidth", "posthog": '$.properties."$viewport_width"'},
    "viewport_height": {"pixelpipe": "$.viewportHeight", "posthog": '$.properties."$viewport_height"'},
}
_TEXT_CAPS = {"referrer": d.URL_MAX, "title": d.TITLE_MAX, "language": d.LANGUAGE_MAX,
              "timezone": d.TIMEZONE_MAX}
# Snowplow sends sizes as "WIDTHxHEIGHT" strings.
_SNOWPLOW_SIZES = {"screen_width": ("$.res", 1), "screen_height": ("$.res", 2),
                   "viewport_width": ("$.vp", 1), "viewport_height": ("$.vp", 2)}


def _sql_list(values) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


_FIELDS = list(_FIELD_PATHS)
_SOURCES = ("pixelpipe", "segment", "posthog", "snowplow")


def _source_paths(source: str) -> str:
    """The JSON paths of every field for one protocol, in _FIELDS order (a path no event has
    where the protocol does not send the field)."""
    paths = []
    for name in _FIELDS:
        path = _FIELD_PATHS[name].get(source)
        if path is None and source == "snowplow" and name in _SNOWPLOW_SIZES:
            path = _SNOWPLOW_SIZES[name][0]
        paths.append("'" + (path or '$."pixelpipe: not sent"') + "'")
    return "[" + ", ".join(paths) + "]"


def _parsed(function: str) -> str:
    """One parse of raw_event_data per event, reading only its protocol's paths."""
    return "CASE coalesce(source, 'pixelpipe') " + " ".join(
        f"WHEN '{s}' THEN {function}(raw, {_source_paths(s)})" for s in _SOURCES) + " END"


def _extract(name: str) -> tuple[str, str]:
    """(SQL for the field's value, SQL true where a value was there but unusable). Reads the
    lists `json_text` and `json_kind` (one entry per field, in _FIELDS order)."""
    slot = _FIELDS.index(name) + 1
    text, kind = f"json_text[{slot}]", f"json_kind[{slot}]"
    if name in _TEXT_CAPS:
        cap = _TEXT_CAPS[name]
        value = f"CASE WHEN {kind} = 'VARCHAR' THEN left({text}, {cap}) END"
        if name == "referrer":  # PostHog's word for none
            value = f"nullif({value}, '$direct')"
        bad = f"(coalesce({kind} NOT IN ('VARCHAR', 'NULL'), false) OR coalesce(length({text}) > {cap}, false))"
        return value, bad
    part = _SNOWPLOW_SIZES[name][1]
    number = (f"CASE WHEN source = 'snowplow' THEN CASE WHEN {kind} = 'VARCHAR' THEN "
              f"TRY_CAST(split_part({text}, 'x', {part}) AS DOUBLE) END "
              f"WHEN {kind} IN ('UBIGINT', 'BIGINT', 'DOUBLE') THEN TRY_CAST({text} AS DOUBLE) END")
    value = f"CASE WHEN {number} BETWEEN 1 AND {d.SCREEN_MAX} THEN CAST({number} AS INTEGER) END"
    bad = f"coalesce(NOT ({number} BETWEEN 1 AND {d.SCREEN_MAX}), false)"
    return value, bad


def _utm(name: str) -> str:
    value = f"CASE WHEN contains(url, '{name}=') THEN regexp_extract(url, '[?&]{name}=([^&#]*)', 1) END"
    return f"left(nullif(trim(try(url_decode(replace({value}, '+', ' ')))), ''), {d.UTM_MAX})"


def _host(column: str) -> str:
    """The host of a URL, lower case, without `www.`; '' when it does not parse as one."""
    host = f"lower(regexp_extract({column}, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]*)', 1))"
    return f"regexp_replace({host}, '^www\\.', '')"


def _events_sql() -> str:
    extracted = {name: _extract(name) for name in _FIELD_PATHS}
    fields = ",\n       ".join(f"{value} AS {name}" for name, (value, _) in extracted.items())
    bad = " OR ".join(f"({b})" for _, b in extracted.values())
    return f"""
CREATE TEMP TABLE events AS
WITH raw_rows AS (
    -- Times as plain UTC timestamps: no time-zone arithmetic per event from here on.
    SELECT id, event_id, event_type, visitor_id, session_id AS client_session_id, site_id, url, path,
           user_agent, make_timestamp(epoch_us(created_at)) AS created_at, coalesce(source, 'pixelpipe') AS source,
           CAST(raw_event_data AS VARCHAR) AS raw, make_timestamp(epoch_us("timestamp")) AS client_timestamp
    FROM read_parquet($files, union_by_name = true)
), repeated AS (  -- re-sent events: the earliest copy is kept
    SELECT event_id, min(created_at) AS first_at FROM raw_rows GROUP BY event_id HAVING count(*) > 1
), first_copies AS (
    SELECT r.event_id, min(r.id) AS first_id
    FROM raw_rows r JOIN repeated p ON p.event_id = r.event_id AND r.created_at = p.first_at GROUP BY r.event_id
), deduplicated AS (
    SELECT r.* EXCLUDE (raw), {_parsed("json_extract_string")} AS json_text, {_parsed("json_type")} AS json_kind
    FROM raw_rows r LEFT JOIN first_copies f USING (event_id)
    WHERE f.first_id IS NULL OR f.first_id = r.id
)
SELECT id, event_id, event_type, nullif(visitor_id, '') AS visitor_id, client_session_id, site_id,
       left(url, {d.URL_MAX}) AS url, left(path, {d.PATH_MAX}) AS path, user_agent, source,
       -- the event's own clock, trusted within [created_at - 24 h, created_at]
       least(greatest(client_timestamp, created_at - INTERVAL {int(d.CLOCK_WINDOW.total_seconds())} SECOND),
             created_at) AS ts,
       client_timestamp NOT BETWEEN created_at - INTERVAL {int(d.CLOCK_WINDOW.total_seconds())} SECOND
             AND created_at AS clamped,
       event_type IN ({_sql_list(d.PAGEVIEW_TYPES)}) AS is_pageview,
       event_type NOT IN ({_sql_list(d.NON_INTERACTION_TYPES)}) AS is_interaction,
       {fields},
       {bad} AS has_bad_value,
       {_utm('utm_source')} AS utm_source, {_utm('utm_medium')} AS utm_medium,
       {_utm('utm_campaign')} AS utm_campaign, {_utm('utm_content')} AS utm_content,
       {_utm('utm_term')} AS utm_term
FROM deduplicated
"""


# A session: a visitor's events split after SESSION_GAP without one and where the UTC date of
# the event's time changes. session_id is a hash of the site, the visitor and the session's first
# event: the same hours always give the same ids.
_SESSIONS_SQL = f"""
CREATE TEMP TABLE shared_visitors AS
WITH busy AS (  -- only a visitor with that many events can have that many client sessions
    SELECT visitor_id, count(*) AS events FROM events WHERE visitor_id IS NOT NULL GROUP BY visitor_id
    HAVING count(*) > {d.MAX_CLIENT_SESSIONS_PER_VISITOR}
)
SELECT visitor_id FROM busy WHERE events > {d.MAX_EVENTS_PER_VISITOR}
UNION
SELECT e.visitor_id FROM events e JOIN busy USING (visitor_id)
GROUP BY e.visitor_id HAVING count(DISTINCT e.client_session_id) > {d.MAX_CLIENT_SESSIONS_PER_VISITOR};

-- Only the narrow columns go through the windows' sorts; the events join back by id.
CREATE TEMP TABLE visitor_split AS
WITH starts AS (
    SELECT id, visitor_id, ts,
           CASE WHEN lag(ts) OVER w IS NULL
                  OR ts - lag(ts) OVER w > INTERVAL {int(d.SESSION_GAP.total_seconds())} SECOND
                  OR epoch_us(ts) // 86400000000 <> epoch_us(lag(ts) OVER w) // 86400000000 THEN 1 ELSE 0 END
           AS starts
    FROM events WHERE visitor_id IS NOT NULL AND visitor_id NOT IN (SELECT visitor_id FROM shared_visitors)
    WINDOW w AS (PARTITION BY visitor_id ORDER BY ts, id)
)
SELECT id, visitor_id, sum(starts) OVER w AS session_no, row_number() OVER w AS seq
FROM starts WINDOW w AS (PARTITION BY visitor_id ORDER BY ts, id);

CREATE TEMP TABLE session_events AS
SELECT e.*, v.session_no, v.seq
FROM events e JOIN visitor_split v USING (id);

CREATE TEMP TABLE session_rows AS
SELECT site_id, md5(site_id || chr(31) || visitor_id || chr(31) || arg_min(event_id, seq)) AS session_id,
       visitor_id, session_no, min(ts) AS session_start, max(ts) AS session_end,
       CAST(epoch(max(ts) - min(ts)) AS INTEGER) AS duration_seconds,
       CAST(count(*) FILTER (is_pageview) AS INTEGER) AS pageview_count,
       CAST(count(*) AS INTEGER) AS event_count,
       count(*) FILTER (is_pageview) <= 1 AND count(*) FILTER (is_interaction) = 0 AS bounce,
       -- entry and exit: the first and last pageview (the first event when there is none)
       arg_min_null(url, entry_rank) AS entry_url, arg_min_null(path, entry_rank) AS entry_path,
       arg_min_null(title, entry_rank) AS entry_title,
       arg_max_null(url, exit_rank) AS exit_url, arg_max_null(path, exit_rank) AS exit_path,
       -- attribution: the session's first event
       arg_min_null(utm_source, seq) AS utm_source, arg_min_null(utm_medium, seq) AS utm_medium,
       arg_min_null(utm_campaign, seq) AS utm_campaign, arg_min_null(utm_content, seq) AS utm_content,
       arg_min_null(utm_term, seq) AS utm_term, arg_min_null(referrer, seq) AS original_referrer,
       arg_min_null(user_agent, seq) AS user_agent,
       -- what the browser told: the first pageview
       arg_min_null(language, entry_rank) AS browser_language, arg_min_null(timezone, entry_rank) AS timezone,
       arg_min_null(screen_width, entry_rank) AS screen_width,
       arg_min_null(screen_height, entry_rank) AS screen_height,
       arg_min_null(viewport_width, entry_rank) AS viewport_width,
       arg_min_null(viewport_height, entry_rank) AS viewport_height,
       arg_min_null(source, seq) AS source
FROM (SELECT *,
             -- entry: the first pageview (else the first event); exit: the last pageview (else the last event)
             CASE WHEN is_pageview THEN seq ELSE seq + 4294967296 END AS entry_rank,
             CASE WHEN is_pageview THEN seq + 4294967296 ELSE seq END AS exit_rank
      FROM session_events)
GROUP BY site_id, visitor_id, session_no;
"""

_OUTPUT_SQL = {
    "sessions": f"""
SELECT s.site_id, s.session_id, s.visitor_id, s.session_start, s.session_end, s.duration_seconds,
       s.pageview_count, s.event_count, s.bounce, s.entry_url, s.entry_path, s.entry_title,
       s.exit_url, s.exit_path, s.utm_source, s.utm_medium, s.utm_campaign, s.utm_content, s.utm_term,
       CASE WHEN s.original_referrer IS NULL OR r.host = '' OR r.host = {_host('s.entry_url')} THEN 'direct'
            ELSE r.referrer_type END AS referrer_type,
       CASE WHEN s.original_referrer IS NULL OR r.host = '' OR r.host = {_host('s.entry_url')} THEN NULL
            ELSE r.referrer_platform END AS referrer_platform,
       s.original_referrer, s.user_agent, u.browser, u.os, u.device_type, s.browser_language,
       s.timezone, s.screen_width, s.screen_height, s.viewport_width, s.viewport_height, s.source
FROM session_rows s
LEFT JOIN referrer_hosts r ON r.referrer = s.original_referrer
LEFT JOIN user_agents u ON u.user_agent = s.user_agent
ORDER BY s.session_start, s.session_id""",
    "pageviews": f"""
WITH on_page AS (  -- to the session's next pageview
    SELECT id, visitor_id, session_no,
           CAST(epoch(lead(ts) OVER (PARTITION BY visitor_id, session_no ORDER BY ts, id) - ts) AS INTEGER) AS seconds
    FROM session_events WHERE is_pageview
)
SELECT e.site_id, r.session_id, r.visitor_id, e.event_id, e.url, e.path, e.title, e.ts AS view_timestamp,
       p.seconds AS time_on_page_seconds,
       e.referrer, coalesce(e.referrer_host = e.page_host AND e.page_host <> '', false) AS internal_referrer,
       e.utm_source, e.utm_medium, e.utm_campaign, e.utm_content, e.utm_term
FROM (SELECT *, CASE WHEN referrer IS NOT NULL THEN {_host('referrer')} END AS referrer_host,
             CASE WHEN referrer IS NOT NULL THEN {_host('url')} END AS page_host
      FROM events WHERE is_pageview) e
LEFT JOIN on_page p ON p.id = e.id
LEFT JOIN session_rows r ON r.visitor_id = p.visitor_id AND r.session_no = p.session_no
ORDER BY view_timestamp, e.event_id""",
    "daily_site_metrics": """
SELECT $site AS site_id, CAST($day AS DATE) AS metric_date,
       CAST((SELECT count(DISTINCT visitor_id) FROM sessions_out) AS INTEGER) AS unique_visitors,
       CAST((SELECT count(*) FROM sessions_out) AS INTEGER) AS total_sessions,
       CAST((SELECT count(*) FROM events WHERE is_pageview) AS INTEGER) AS total_pageviews,
       (SELECT round(avg(CAST(bounce AS INTEGER)), 4) FROM sessions_out) AS bounce_rate,
       (SELECT CAST(round(avg(duration_seconds)) AS INTEGER) FROM sessions_out) AS avg_session_duration_seconds,
       (SELECT round(avg(pageview_count), 2) FROM sessions_out) AS avg_pages_per_session,
       CAST((SELECT count(*) FROM events) AS INTEGER) AS total_events,
       CAST((SELECT count(*) FROM sessions_out WHERE referrer_type = 'direct') AS INTEGER) AS direct_sessions,
       CAST((SELECT count(*) FROM sessions_out WHERE referrer_type = 'search') AS INTEGER) AS search_sessions,
       CAST((SELECT count(*) FROM sessions_out WHERE referrer_type = 'social') AS INTEGER) AS social_sessions,
       CAST((SELECT count(*) FROM sessions_out WHERE referrer_type = 'referral') AS INTEGER) AS referral_sessions""",
    # bounce_rate: bounced sessions that entered on the path, over the sessions that entered on it.
    "page_performance": """
WITH views AS (
    SELECT path, CAST(count(*) AS INTEGER) AS total_views,
           CAST(count(DISTINCT visitor_id) AS INTEGER) AS unique_visitors,
           CAST(count(DISTINCT session_id) AS INTEGER) AS unique_sessions,
           round(avg(time_on_page_seconds), 2) AS avg_time_on_page_seconds
    FROM pageviews_out GROUP BY path
), entries AS (
    SELECT entry_path AS path, count(*) AS entries, avg(CAST(bounce AS INTEGER)) AS bounce_rate
    FROM sessions_out WHERE pageview_count > 0 GROUP BY entry_path
), exits AS (
    SELECT exit_path AS path, count(*) AS exits FROM sessions_out WHERE pageview_count > 0 GROUP BY exit_path
)
SELECT $site AS site_id, CAST($day AS DATE) AS metric_date, v.path, v.total_views, v.unique_visitors,
       v.unique_sessions, v.avg_time_on_page_seconds, CAST(coalesce(n.entries, 0) AS INTEGER) AS entries,
       CAST(coalesce(x.exits, 0) AS INTEGER) AS exits, round(n.bounce_rate, 4) AS bounce_rate
FROM views v LEFT JOIN entries n ON n.path IS NOT DISTINCT FROM v.path
LEFT JOIN exits x ON x.path IS NOT DISTINCT FROM v.path
ORDER BY v.path NULLS LAST""",
}


@dataclass
class DatasetFile:
    """One finished Parquet file of one dataset."""

    name: str
    path: Path
    rows: int
    bytes: int
    sha256: str


@dataclass
class SiteDay:
    """What one site's day computed: each dataset's files, and the figures its metadata shows."""

    site_id: str
    day: date
    files: dict[str, list[DatasetFile]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    input_rows: int = 0
    input_pageviews: int = 0
    duplicates: int = 0
    clamped_timestamps: int = 0
    bad_values: int = 0
    shared_visitors: int = 0


# DuckDB's own limit; the process peaks well above it (hash tables and windows it does not count,
# Arrow batches, the Python side): 256 MB kept a 10-million-event day under 1 GB of RSS with
# two sites side by side, 512 MB did not (docs/benchmarks.md).
MEMORY_LIMIT = "256MB"


def connect(spool: Path, memory_limit: str = MEMORY_LIMIT, threads: int = 2) -> duckdb.DuckDBPyConnection:
    """An in-process DuckDB that stays under `memory_limit`, spilling to `spool`."""
    spool.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads,
                                 "temp_directory": str(spool / "duckdb-spill"),
                                 "preserve_insertion_order": True})
    con.execute("SET TimeZone = 'UTC'")
    return con


def _lookups(con: duckdb.DuckDBPyConnection) -> None:
    """Referrer classes and user-agent classes of the day's distinct values, made in Python by
    the maintained lists (definitions.py) and joined in SQL: each value is classified once."""
    pairs = con.execute(f"""SELECT DISTINCT original_referrer, {_host('original_referrer')}
                             FROM session_rows WHERE original_referrer IS NOT NULL""").fetchall()
    classes = {host: d.referrer_class(host) for host in {h for _, h in pairs if h}}
    kinds = [classes.get(h, ("referral", None)) for _, h in pairs]
    table = pa.table({
        "referrer": pa.array([r for r, _ in pairs], pa.string()),
        "host": pa.array([h for _, h in pairs], pa.string()),
        "referrer_type": pa.array([k[0] for k in kinds], pa.string()),
        "referrer_platform": pa.array([k[1] for k in kinds], pa.string()),
    })
    con.register("referrer_hosts", table)
    agents = [a for (a,) in con.execute("SELECT DISTINCT user_agent FROM session_rows").fetchall() if a]
    parsed = [d.device_class(a) for a in agents]
    con.register("user_agents", pa.table({
        "user_agent": pa.array(agents, pa.string()),
        "browser": pa.array([p[0] for p in parsed], pa.string()),
        "os": pa.array([p[1] for p in parsed], pa.string()),
        "device_type": pa.array([p[2] for p in parsed], pa.string()),
    }))


def _write(con, dataset: str, query: str, params: dict, spool: Path, rows_per_file: int,
           row_group_rows: int = 64 * 1024) -> list[DatasetFile]:
    """The query's rows, in the dataset's schema, as zstd Parquet files of at most
    `rows_per_file` rows; no file for no rows (the receipt says 0)."""
    schema = SCHEMAS[dataset]
    files: list[DatasetFile] = []
    writer, path, rows = None, None, 0

    def close():
        nonlocal writer, path, rows
        writer.close()
        data = path.read_bytes()
        files.append(DatasetFile(path.name, path, rows, len(data), hashlib.sha256(data).hexdigest()))
        writer, path, rows = None, None, 0

    reader = con.execute(query, params).to_arrow_reader(row_group_rows)
    for batch in reader:
        table = pa.Table.from_batches([batch]).cast(schema)
        while table.num_rows:
            if writer is None:
                path = spool / dataset / f"part-{len(files):05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, schema, compression="zstd")
            head = table.slice(0, rows_per_file - rows)
            table = table.slice(head.num_rows)
            writer.write_table(head, row_group_size=row_group_rows)
            rows += head.num_rows
            if rows >= rows_per_file:
                close()
    if writer is not None:
        close()
    return files


def compute_site_day(con: duckdb.DuckDBPyConnection, site_id: str, day: date, hour_files: list[Path],
                     spool: Path, rows_per_file: int = 1_000_000) -> SiteDay:
    """The four datasets of one site's day from its hour files (empty list: a day without
    events, which still has its daily_site_metrics row). Files land under spool/<dataset>/."""
    result = SiteDay(site_id, day)
    files = [str(p) for p in hour_files]
    for table in ("events", "visitor_split", "shared_visitors", "session_events", "session_rows", "sessions_out", "pageviews_out"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    for view in ("referrer_hosts", "user_agents"):
        con.unregister(view)  # a no-op when not registered
    if files:
        con.execute(_events_sql(), {"files": files})
        # Counted again straight from the files, for daily_metrics_reconcile: every row, and the
        # distinct pageviews (a re-sent copy once).
        result.input_rows, result.input_pageviews = con.execute(
            f"""SELECT count(*), count(DISTINCT event_id) FILTER (event_type IN ({_sql_list(d.PAGEVIEW_TYPES)}))
                FROM read_parquet($files, union_by_name = true)""", {"files": files}).fetchone()
    else:
        con.execute("""CREATE TEMP TABLE events AS SELECT NULL::BIGINT id, NULL::VARCHAR event_id,
            NULL::VARCHAR event_type, NULL::VARCHAR visitor_id, NULL::VARCHAR client_session_id,
            NULL::VARCHAR site_id, NULL::VARCHAR url,
            NULL::VARCHAR path, NULL::VARCHAR user_agent, NULL::VARCHAR source, NULL::TIMESTAMP ts,
            false clamped, false is_pageview, false is_interaction, NULL::VARCHAR referrer,
            NULL::VARCHAR title, NULL::VARCHAR language, NULL::VARCHAR timezone, NULL::INTEGER screen_width,
            NULL::INTEGER screen_height, NULL::INTEGER viewport_width, NULL::INTEGER viewport_height,
            false has_bad_value, NULL::VARCHAR utm_source, NULL::VARCHAR utm_medium,
            NULL::VARCHAR utm_campaign, NULL::VARCHAR utm_content, NULL::VARCHAR utm_term LIMIT 0""")
    con.execute(_SESSIONS_SQL)
    _lookups(con)
    params = {"site": site_id, "day": day.isoformat()}
    con.execute(f"CREATE TEMP TABLE sessions_out AS {_OUTPUT_SQL['sessions']}")
    con.execute(f"CREATE TEMP TABLE pageviews_out AS {_OUTPUT_SQL['pageviews']}")
    sources = {"sessions": "SELECT * FROM sessions_out", "pageviews": "SELECT * FROM pageviews_out",
               "daily_site_metrics": _OUTPUT_SQL["daily_site_metrics"],
               "page_performance": _OUTPUT_SQL["page_performance"]}
    for dataset, query in sources.items():
        used = {k: v for k, v in params.items() if f"${k}" in query}
        result.files[dataset] = _write(con, dataset, query, used, spool, rows_per_file)
        result.rows[dataset] = sum(f.rows for f in result.files[dataset])
    metrics = con.execute(_OUTPUT_SQL["daily_site_metrics"], params).to_arrow_table().to_pylist()[0]
    result.metrics = metrics
    counts = con.execute("""SELECT count(*) FILTER (clamped), count(*) FILTER (has_bad_value),
        (SELECT count(*) FROM shared_visitors) FROM events""").fetchone()
    result.clamped_timestamps, result.bad_values, result.shared_visitors = counts
    result.duplicates = result.input_rows - metrics["total_events"]
    return result
