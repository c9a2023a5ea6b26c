"""Clip quality after each job: CLIP prompt consistency, image-to-video consistency, motion, ratings."""
