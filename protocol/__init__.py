"""comity/1, the wire protocol: a strict JOSE profile, pure (no I/O, no clock, no environment).

Time and randomness come in as arguments.  ``SPEC.md`` beside this file is the normative
text; ``vectors/`` holds its test vectors.
"""

PROTOCOL_NAME = "comity/1"
