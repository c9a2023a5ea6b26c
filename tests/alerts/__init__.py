"""Tests for monitor/alerts and alerts/."""
