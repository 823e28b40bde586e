"""One-off measurements behind figures quoted in the README (not scenarios of the table)."""
