"""The hourly export: events_log, hourly_export and its checks, the job and its schedule."""
