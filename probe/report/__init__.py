"""Reporting: results tables, figures and `ovprobe-report`, read from run records only."""
