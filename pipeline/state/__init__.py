"""The state of an output directory: the SQLite store (``store``), its values (``rows``), schema
and migrations (``schema``), group commit (``commits``) and the run lock (``lock``)."""
