"""Watching a served model: alert rules, dashboards and a live terminal view."""
