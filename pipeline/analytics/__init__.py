"""The daily analytics of the original design (sessions, pageviews, daily_site_metrics,
page_performance), computed from the exported hours in the backup bucket. Plain code: no Dagster
import, so the assets, the benchmark and the tests call the same functions (docs/analytics.md).
"""
