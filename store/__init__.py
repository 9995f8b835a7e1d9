"""The re-embedding store: a Delta Lake table of one embedding per catalog track.

`table` (schema, open, index, the one commit per run), `changes` (listing vs table),
`maintenance` (compact, vacuum, history, import of the previous format) and `cli`
(`musicrep store ...`). The Beam side is musicrep.pipelines.reembed.
"""
