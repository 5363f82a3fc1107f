"""What a day, a pageview, a session, a bounce and a referrer type are: each written once here,
and in docs/analytics.md. The SQL in daily.py takes its constants from this module, and the
device and referrer lookups it joins against are made here, from maintained lists."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

from ua_parser import parse as parse_user_agent

# A pageview, in every protocol the collector takes: ours, Segment/RudderStack, Snowplow, PostHog.
PAGEVIEW_TYPES = ("pageview", "page", "page_view", "$pageview")
# Events that are not an interaction: a session of these and at most one pageview is a bounce
# (Plausible's rule). Scroll milestones (ours), Snowplow's page pings, PostHog's page leave.
NON_INTERACTION_TYPES = (*PAGEVIEW_TYPES, "scroll", "scroll_depth", "page_ping", "$pageleave")

# A visitor's session ends after this long without an event (Plausible, Umami, PostHog).
SESSION_GAP = timedelta(minutes=30)
# An event's own clock is trusted inside [created_at - CLOCK_WINDOW, created_at].
CLOCK_WINDOW = timedelta(hours=24)
# A visitor id that many people share (a constant an integration sends for everyone, a bot) is
# no visitor: its events count in total_events and in no session. It is shared when its day
# holds more client session ids, or more events, than one person makes (t.js, PostHog and
# Snowplow send their own session id; 20,000 events is a Snowplow page ping every 5 s all day).
MAX_CLIENT_SESSIONS_PER_VISITOR = 500
MAX_EVENTS_PER_VISITOR = 20_000

# Caps, as the collector caps text (ingest_service/events.py): longer is cut, not refused.
TITLE_MAX = 1000
URL_MAX = 2048
PATH_MAX = 500
UTM_MAX = 100
LANGUAGE_MAX = 35  # the longest BCP 47 tag browsers send
TIMEZONE_MAX = 64
SCREEN_MAX = 100_000  # pixels: a screen or viewport side outside [1, SCREEN_MAX] is absent

_REFERRER_LIST = Path(__file__).with_name("referrer_hosts.tsv")


@functools.cache
def _referrer_hosts() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(exact hosts, hosts with any top-level domain) -> (type, platform), from the data file."""
    exact, any_tld = {}, {}
    for line in _REFERRER_LIST.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        host, kind, platform = line.split("\t")
        if host.endswith(".{}"):
            any_tld[host[:-3]] = (kind, platform)
        else:
            exact[host] = (kind, platform)
    return exact, any_tld


def referrer_class(host: str) -> tuple[str, str | None]:
    """A referrer's host (lower case, without `www.`) -> (referrer_type, referrer_platform):
    `search` or `social` when the host or a parent domain is on the list, else `referral`.
    (`direct`, no referrer or the site's own host, is decided in SQL before this.)"""
    exact, any_tld = _referrer_hosts()
    labels = host.split(".")
    for start in range(len(labels) - 1):  # the host, then each parent domain
        candidate = ".".join(labels[start:])
        if candidate in exact:
            return exact[candidate]
        rest = labels[start:]
        for tld_labels in (1, 2):  # google.{} matches google.de and google.co.uk
            if len(rest) > tld_labels and ".".join(rest[:-tld_labels]) in any_tld:
                return any_tld[".".join(rest[:-tld_labels])]
    return "referral", None


# Operating systems that only run on desktops and laptops, as ua-parser names them.
_DESKTOP_OS = {"Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Chrome OS", "FreeBSD", "OpenBSD"}


def device_class(user_agent: str) -> tuple[str | None, str | None, str]:
    """A user agent -> (browser, os, device_type) through ua-parser (its maintained regexes,
    never ours). device_type is `bot`, `tablet`, `mobile`, `desktop` or `other`, from the
    parser's device and OS families."""
    result = parse_user_agent(user_agent)
    browser = result.user_agent.family if result.user_agent else None
    os_name = result.os.family if result.os else None
    device = result.device.family if result.device else "Other"
    if device == "Spider":
        kind = "bot"
    elif device.startswith(("iPad", "Kindle")) or "Tablet" in device:
        kind = "tablet"
    elif os_name in ("iOS", "Android", "Windows Phone", "KaiOS", "BlackBerry OS"):
        kind = "mobile"
    elif os_name in _DESKTOP_OS:
        kind = "desktop"
    else:
        kind = "other"
    return (None if browser == "Other" else browser), (None if os_name == "Other" else os_name), kind
