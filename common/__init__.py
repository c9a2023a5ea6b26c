"""What both processes share: the event record, the spool, the job sizes, time units, auth and redaction."""
