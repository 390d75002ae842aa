"""Arrow schemas of every table, the provenance struct, content-hash ids and row validation."""

from schemas.tables import PROBLEMS, PROVENANCE, REJECTED, RL, SCHEMA_VERSION, SFT, TABLES, TRACES

__all__ = ["PROBLEMS", "PROVENANCE", "REJECTED", "RL", "SCHEMA_VERSION", "SFT", "TABLES", "TRACES"]
