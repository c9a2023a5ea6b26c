"""Analysis: what stored events and samples mean: job summaries, devices, predictions, recommendations, reports."""
