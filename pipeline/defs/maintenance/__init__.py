"""Database upkeep: partitions, bloated indexes, health figures, daily."""
