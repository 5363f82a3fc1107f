"""The daily analytics' assets, around the plain code of pipeline/analytics/."""
