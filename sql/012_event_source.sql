-- Which protocol an event came in by: 'pixelpipe' (t.js, /collect, the pixel), 'segment'
-- (Segment's and RudderStack's SDKs, /v1/*), 'snowplow' (Snowplow trackers) or 'posthog'
-- (PostHog's SDKs). Exported as the `source` column (export schema version 3, docs/sdks.md).
-- A constant default: adding the column rewrites nothing.
ALTER TABLE events_log ADD COLUMN IF NOT EXISTS source VARCHAR(20) NOT NULL DEFAULT 'pixelpipe';
