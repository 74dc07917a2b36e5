"""HTTP: the peer listener (inbox, keysets, log proofs) and the local listener (JSON API)."""
