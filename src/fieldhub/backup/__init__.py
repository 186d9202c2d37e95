"""Backups of a fieldhub install and their restore (docs/backups.md).

`contents` says what a backup holds and reads and writes its manifest; `sqlite_copy` and
`pg_copy` copy the database (SQLite's online backup API; pg_dump and pg_restore, found by
`pg_tools`); `files` copies the data dir's other state; `make` and `restore` run the steps in
order; `in_use` tells whether fieldhub runs on a data dir; `schedule` is the backup `fieldhub up`
makes every few hours, with its rotation and metrics.
"""
