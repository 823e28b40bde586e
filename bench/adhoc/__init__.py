"""One-off measurements behind figures quoted in the README and docs/performance.md (not scenarios of the table)."""
