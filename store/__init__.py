"""The re-embedding store: a Delta Lake table of one embedding per catalog track.

`table` (open, index, the one commit per run), `changes` (listing vs table), `runs`
(what one reembed run writes and how it becomes its commit), `maintenance` (compact,
vacuum, history, import of the previous format), `options` (delta-rs storage options)
and `cli` (`musicrep store ...`). The table's schema is musicrep.contracts.schema; the
Beam job that writes into it is musicrep.pipelines.reembed.
"""
