"""Key custody for a Comity node: keystore, signers, keyset issuing, pinned peers."""
