"""The field names of every data format, written once: the readers of files (rmcore.data.records) use
them to recognise a record or a CSV header, the readers of records (rmcore.data.formats) to detect
the format and to suggest the field a misspelt key meant."""

FORMAT_FIELDS = {
    "ranked": ("prompt", "responses", "ranks"),
    "tidy": ("prompt", "response", "rank"),
    "pairs": ("prompt", "chosen", "rejected"),
    "implicit_pairs": ("chosen", "rejected"),
}
RECORD_FIELDS = frozenset(f for fields in FORMAT_FIELDS.values() for f in fields)  # what a record of data holds
OPTIONAL_FIELDS = frozenset({"margin", "message_tree_id"})
KNOWN_FIELDS = sorted(RECORD_FIELDS | OPTIONAL_FIELDS)
