"""Pieces both processes share: the event record and the disk spool."""
