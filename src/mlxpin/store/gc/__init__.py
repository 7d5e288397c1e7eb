"""Garbage collection of the store, in one home: `inventory` reads the live lock dirs and
the disk, `plan` decides (purely) what is garbage, `sweep` deletes one item safely."""
