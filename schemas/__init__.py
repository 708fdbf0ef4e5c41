"""The wire contract: one .avsc per record (named by full name), frozen released versions under
frozen/<full name>/vN.avsc, and the codec in `schemas.codec`, the only place bytes become events
and events become bytes. Imports the core, nothing else of the project.
"""
