"""From admission to the stores: the pipeline, its write-ahead log, dead letters and ledger."""
