"""Tests of the quality scorer (monitor/quality)."""
