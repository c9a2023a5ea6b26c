"""Analysis: what the stored events and samples mean: job summaries, devices, predictions, recommendations, statistics, reports."""
